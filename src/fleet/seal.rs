//! How a token set is stored in the shared session: JSON, sealed with XChaCha20-Poly1305 when
//! an encryption key is set, so that nothing in Redis holds a token's bytes.

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
}

/// Seals token sets under one key (or none), bound to the scope they are stored under, so a
/// set copied to another scope does not open.
#[derive(Clone)]
pub(super) struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.cipher.is_some() {
            "Sealer(XChaCha20-Poly1305, key [redacted])"
        } else {
            "Sealer(none)"
        })
    }
}

impl Sealer {
    pub(super) fn new(key: Option<[u8; 32]>) -> Self {
        Self {
            cipher: key.map(|key| XChaCha20Poly1305::new(&key.into())),
        }
    }

    pub(super) fn seal(&self, scope: &str, tokens: &StoredTokens) -> Vec<u8> {
        let wire = Wire {
            access_token: tokens.access_token.expose().to_owned(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            ow_id: tokens.ow_id,
            expires_at_unix_ms: tokens
                .expires_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        // Serializing strings and numbers cannot fail.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        let Some(cipher) = &self.cipher else {
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
        let json = match (format, &self.cipher) {
            (PLAIN, None) => rest.to_vec(),
            (SEALED, Some(cipher)) if rest.len() > NONCE_LEN => {
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let payload = Payload {
                    msg: sealed,
                    aad: scope.as_bytes(),
                };
                cipher.decrypt(XNonce::from_slice(nonce), payload).ok()?
            }
            _ => return None,
        };
        let wire: Wire = serde_json::from_slice(&json).ok()?;
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_millis(wire.expires_at_unix_ms))?;
        Some(StoredTokens::new(
            Secret::new(wire.access_token),
            wire.refresh_token.map(Secret::new),
            wire.ow_id,
            expires_at,
        ))
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
    }

    #[test]
    fn a_sealed_set_opens_with_its_key_and_scope_only() {
        let sealer = Sealer::new(Some([7; 32]));
        let stored = sealer.seal("scope-a", &tokens());
        let as_text = String::from_utf8_lossy(&stored);
        assert!(!as_text.contains("token-bytes"), "{as_text}");
        assert_eq!(sealer.open("scope-a", &stored), Some(tokens()));
        assert_eq!(sealer.open("scope-b", &stored), None);
        assert_eq!(Sealer::new(Some([8; 32])).open("scope-a", &stored), None);
        assert_eq!(Sealer::new(None).open("scope-a", &stored), None);
    }

    #[test]
    fn a_plain_set_round_trips_and_garbage_is_none() {
        let sealer = Sealer::new(None);
        let stored = sealer.seal("s", &tokens());
        assert_eq!(sealer.open("s", &stored), Some(tokens()));
        assert_eq!(Sealer::new(Some([1; 32])).open("s", &stored), None);
        for garbage in [&b""[..], b"x", b"p{", b"s0123", &[SEALED; 80]] {
            assert_eq!(sealer.open("s", garbage), None);
            assert_eq!(Sealer::new(Some([1; 32])).open("s", garbage), None);
        }
    }
}
