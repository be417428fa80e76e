//! The account a session belongs to, as a fingerprint that can be kept beside its tokens.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::Url;
use sha2::Sha256;

use crate::secret::Secret;

/// A keyed hash of the account's identity: HMAC-SHA-256, under the client secret, of the base
/// URL, client id, workspace host and user. It tells one account's session from another's (a
/// staging store read by production, two services on one file) and reveals none of them: without
/// the client secret it cannot even be checked against a guess.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AccountFingerprint(String);

impl AccountFingerprint {
    pub(crate) fn of(
        base: &Url,
        client_id: &str,
        client_secret: &Secret,
        workspace_host: &[u8],
        email: &str,
    ) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(client_secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        for part in [
            base.as_str().as_bytes(),
            client_id.trim().as_bytes(),
            workspace_host,
            email.trim().as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let digest = mac.finalize().into_bytes();
        Self(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a stored set's fingerprint is this account's.
    pub(crate) fn owns(&self, stored: Option<&str>) -> bool {
        stored == Some(self.0.as_str())
    }
}

impl fmt::Debug for AccountFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(base: &str, id: &str, secret: &str, host: &str, email: &str) -> String {
        let base = Url::parse(base).unwrap();
        AccountFingerprint::of(&base, id, &Secret::new(secret), host.as_bytes(), email)
            .as_str()
            .to_owned()
    }

    #[test]
    fn every_part_of_the_account_changes_the_fingerprint_and_none_shows_in_it() {
        let a = fingerprint(
            "https://api.iqm.com/",
            "id",
            "s",
            "acme.iqm.com",
            "ops@acme.com",
        );
        assert_eq!(a.len(), 32);
        for other in [
            fingerprint(
                "https://staging.iqm.com/",
                "id",
                "s",
                "acme.iqm.com",
                "ops@acme.com",
            ),
            fingerprint(
                "https://api.iqm.com/",
                "id2",
                "s",
                "acme.iqm.com",
                "ops@acme.com",
            ),
            fingerprint(
                "https://api.iqm.com/",
                "id",
                "s2",
                "acme.iqm.com",
                "ops@acme.com",
            ),
            fingerprint(
                "https://api.iqm.com/",
                "id",
                "s",
                "beta.iqm.com",
                "ops@acme.com",
            ),
            fingerprint(
                "https://api.iqm.com/",
                "id",
                "s",
                "acme.iqm.com",
                "dev@acme.com",
            ),
        ] {
            assert_ne!(a, other);
        }
        assert_eq!(
            a,
            fingerprint(
                "https://api.iqm.com/",
                "id",
                "s",
                "acme.iqm.com",
                " ops@acme.com "
            )
        );
        for part in ["iqm", "acme", "ops", "id"] {
            assert!(!a.contains(part), "{a}");
        }
    }
}
