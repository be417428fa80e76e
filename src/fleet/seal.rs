//! How a token set is stored in the shared session: JSON, sealed with XChaCha20-Poly1305 when
//! an encryption key is set, so that nothing in Redis holds a token's bytes. A sealed set is
//! stored with its key's id (a hash of the key, which reveals nothing of it), so a replica tells
//! a set sealed under a key it does not hold from a broken one, and keys can be rotated: a
//! replica seals under its first key and opens under any.

use std::time::{Duration, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::store::StoredTokens;

/// The first byte of a stored set: its format.
const PLAIN: u8 = b'p';
const SEALED: u8 = b's';
const NONCE_LEN: usize = 24;

#[derive(Serialize, Deserialize)]
struct Wire {
    access_token: String,
    refresh_token: Option<String>,
    ow_id: u64,
    expires_at_unix_ms: u64,
    /// The account fingerprint; absent in sets published before it was kept.
    #[serde(default)]
    account: Option<String>,
}

/// One encryption key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The id stored with a set sealed under `key`: the first 8 bytes of a domain-separated
/// SHA-256 of it, in hex.
fn key_id(key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"iqm-auth shared session key id\0");
    hash.update(key);
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seals token sets under the first of its keys (or none), bound to the scope they are stored
/// under, so a set copied to another scope does not open; opens them under any of its keys.
#[derive(Clone)]
pub(super) struct Sealer {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.keys.len() {
            0 => f.write_str("Sealer(none)"),
            n => write!(f, "Sealer(XChaCha20-Poly1305, {n} key(s) [redacted])"),
        }
    }
}

impl Sealer {
    pub(super) fn new(keys: &[[u8; 32]]) -> Self {
        let mut unique: Vec<Key> = Vec::with_capacity(keys.len());
        for key in keys {
            let id = key_id(key);
            if unique.iter().all(|k| k.id != id) {
                unique.push(Key {
                    id,
                    cipher: XChaCha20Poly1305::new(&(*key).into()),
                });
            }
        }
        Self { keys: unique }
    }

    /// The id of the key sets are sealed under, empty when they are stored in clear.
    pub(super) fn sealing_key_id(&self) -> &str {
        self.keys.first().map_or("", |key| key.id.as_str())
    }

    /// The ids of every key this sealer opens with, comma-separated.
    pub(super) fn key_ids(&self) -> String {
        let ids: Vec<&str> = self.keys.iter().map(|key| key.id.as_str()).collect();
        ids.join(",")
    }

    /// Whether a set stored with key id `id` (empty: in clear) is one this sealer may open or
    /// replace: in clear, or sealed under one of its keys.
    pub(super) fn knows_key(&self, id: &str) -> bool {
        id.is_empty() || self.keys.iter().any(|key| key.id == id)
    }

    pub(super) fn seal(&self, scope: &str, tokens: &StoredTokens) -> Vec<u8> {
        let wire = Wire {
            access_token: tokens.access_token.expose().to_owned(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            ow_id: tokens.ow_id,
            account: tokens.account.clone(),
            expires_at_unix_ms: tokens
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        // Serializing strings and numbers cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        let Some(Key { cipher, .. }) = self.keys.first() else {
            return [&[PLAIN][..], &json].concat();
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: &json,
            aad: scope.as_bytes(),
        };
        match cipher.encrypt(&nonce, payload) {
            Ok(sealed) => [&[SEALED][..], nonce.as_slice(), &sealed].concat(),
            // Only for messages beyond the cipher's limit (far above a token set's size).
            Err(_) => Vec::new(),
        }
    }

    /// The token set in `stored`, or `None` if it is not one this sealer can open: a foreign
    /// format, another key, another scope, or a plain set when a key is set.
    pub(super) fn open(&self, scope: &str, stored: &[u8]) -> Option<StoredTokens> {
        let (&format, rest) = stored.split_first()?;
        let json = match format {
            PLAIN if self.keys.is_empty() => rest.to_vec(),
            SEALED if rest.len() > NONCE_LEN => {
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                self.keys.iter().find_map(|key| {
                    let payload = Payload {
                        msg: sealed,
                        aad: scope.as_bytes(),
                    };
                    key.cipher.decrypt(XNonce::from_slice(nonce), payload).ok()
                })?
            }
            _ => return None,
        };
        let wire: Wire = serde_json::from_slice(&json).ok()?;
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_millis(wire.expires_at_unix_ms))?;
        let tokens = StoredTokens::new(
            Secret::new(wire.access_token),
            wire.refresh_token.map(Secret::new),
            wire.ow_id,
            expires_at,
        );
        Some(match wire.account {
            Some(account) => tokens.with_account(account),
            None => tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> StoredTokens {
        StoredTokens::new(
            Secret::new("access-token-bytes"),
            Some(Secret::new("refresh-token-bytes")),
            200_001,
            UNIX_EPOCH + Duration::from_millis(4_000_000_000_000),
        )
        .with_account("0123abcd")
    }

    #[test]
    fn a_sealed_set_opens_with_its_key_and_scope_only() {
        let sealer = Sealer::new(&[[7; 32]]);
        let stored = sealer.seal("scope-a", &tokens());
        let as_text = String::from_utf8_lossy(&stored);
        assert!(!as_text.contains("token-bytes"), "{as_text}");
        assert_eq!(sealer.open("scope-a", &stored), Some(tokens()));
        assert_eq!(sealer.open("scope-b", &stored), None);
        assert_eq!(Sealer::new(&[[8; 32]]).open("scope-a", &stored), None);
        assert_eq!(Sealer::new(&[]).open("scope-a", &stored), None);
    }

    #[test]
    fn a_plain_set_round_trips_and_garbage_is_none() {
        let sealer = Sealer::new(&[]);
        let stored = sealer.seal("s", &tokens());
        assert_eq!(sealer.open("s", &stored), Some(tokens()));
        assert_eq!(Sealer::new(&[[1; 32]]).open("s", &stored), None);
        for garbage in [&b""[..], b"x", b"p{", b"s0123", &[SEALED; 80]] {
            assert_eq!(sealer.open("s", garbage), None);
            assert_eq!(Sealer::new(&[[1; 32]]).open("s", garbage), None);
        }
    }

    #[test]
    fn a_rotated_sealer_seals_under_its_first_key_and_opens_under_any() {
        let old = Sealer::new(&[[1; 32]]);
        let rotated = Sealer::new(&[[2; 32], [1; 32]]);
        let by_old = old.seal("s", &tokens());
        assert_eq!(rotated.open("s", &by_old), Some(tokens()));
        let by_rotated = rotated.seal("s", &tokens());
        assert_eq!(old.open("s", &by_rotated), None);
        assert_eq!(
            Sealer::new(&[[2; 32]]).open("s", &by_rotated),
            Some(tokens())
        );
        assert_eq!(
            rotated.sealing_key_id(),
            Sealer::new(&[[2; 32]]).sealing_key_id()
        );
        assert!(rotated.knows_key(old.sealing_key_id()) && rotated.knows_key(""));
        assert!(!old.knows_key(rotated.sealing_key_id()));
        assert!(!Sealer::new(&[]).knows_key(old.sealing_key_id()));
        assert_eq!(rotated.key_ids().split(',').count(), 2);
    }
}
