//! The type of the secrets this crate handles: `secrecy`'s zeroizing string, shared.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

const REDACTED: &str = "[redacted]";

/// A secret string (password, client secret, access or refresh token).
///
/// `Debug` and `Display` print `[redacted]`, so a secret can sit in a struct that is logged
/// without leaking. Read the value with [`Secret::expose`] (or `secrecy`'s
/// [`ExposeSecret`]), only where it is sent. The value is held in a [`secrecy::SecretString`],
/// so its memory is zeroed when the last clone is dropped; clones share it, so cloning copies
/// no secret.
///
/// ```
/// use iqm_auth::Secret;
///
/// let password = Secret::new("hunter2");
/// assert_eq!(format!("{password:?} {password}"), "[redacted] [redacted]");
/// assert_eq!(password.expose(), "hunter2");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<SecretString>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::new(SecretString::from(value.into())))
    }

    /// The secret value itself. Do not log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub(crate) fn is_blank(&self) -> bool {
        self.expose().trim().is_empty()
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.expose()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("s3cr3t-value");
        let shown = format!("{secret:?} {secret} {:?}", Some(&secret));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn blank_detects_whitespace_only_values() {
        assert!(Secret::new("  ").is_blank());
        assert!(!Secret::new(" x ").is_blank());
    }
}
