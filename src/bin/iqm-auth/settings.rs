//! The layer the commands use, built from the flags and the same `IQM_*` environment variables
//! as `IqmAuth::from_env`, joined to the shared session (`--redis`) or a file store (`--store`).

use std::sync::Arc;

use iqm_auth::{ConfigError, FileTokenStore, IqmAuth, RedisSession, Secret};

use crate::cli::{Needs, Settings};
use crate::failure::Failure;

/// Stands in for a setting the command never sends, which the builder requires all the same:
/// `status` makes no auth call (so needs no password), and a sign-up sends no workspace host.
const NEVER_SENT: &str = "never-sent.invalid";

/// A setting, its variable, and the flag that may give it instead.
struct Setting {
    variable: &'static str,
    flag: Option<&'static str>,
    value: Option<String>,
}

impl Setting {
    fn from_flag(variable: &'static str, flag: &'static str, value: Option<&String>) -> Self {
        Self {
            variable,
            flag: Some(flag),
            value: value.cloned(),
        }
    }

    /// A secret: from the environment only.
    fn secret(variable: &'static str) -> Self {
        Self {
            variable,
            flag: None,
            value: std::env::var(variable)
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }

    fn name(&self) -> String {
        match self.flag {
            Some(flag) => format!("{} (or {flag})", self.variable),
            None => self.variable.to_owned(),
        }
    }
}

/// The account's settings, checked for the command at hand.
pub(crate) struct Account {
    pub(crate) base_url: Option<String>,
    pub(crate) client_id: String,
    client_secret: Secret,
    pub(crate) workspace_host: String,
    pub(crate) email: String,
    password: Secret,
}

impl Account {
    /// The settings `needs` asks for, or a failure naming every one that is missing.
    pub(crate) fn resolve(settings: &Settings, needs: Needs) -> Result<Self, Failure> {
        let client_id =
            Setting::from_flag("IQM_CLIENT_ID", "--client-id", settings.client_id.as_ref());
        let client_secret = Setting::secret("IQM_CLIENT_SECRET");
        let workspace_host = Setting::from_flag(
            "IQM_WORKSPACE_HOST",
            "--workspace-host",
            settings.workspace_host.as_ref(),
        );
        let email = Setting::from_flag("IQM_EMAIL", "--email", settings.email.as_ref());
        let password = Setting::secret("IQM_PASSWORD");
        let mut required = vec![&client_id, &client_secret];
        if needs != Needs::Client {
            required.extend([&workspace_host, &email]);
        }
        if needs == Needs::Login {
            required.push(&password);
        }
        let missing: Vec<String> = required
            .iter()
            .filter(|setting| setting.value.is_none())
            .map(|setting| setting.name())
            .collect();
        if !missing.is_empty() {
            let them = if missing.len() == 1 { "it" } else { "them" };
            return Err(Failure::Config(format!(
                "missing {}: set {them} in the environment (see iqm-auth --help)",
                missing.join(", ")
            )));
        }
        let or_never_sent = |setting: Setting| setting.value.unwrap_or_else(|| NEVER_SENT.into());
        Ok(Self {
            base_url: settings.base_url.clone(),
            client_id: client_id.value.unwrap_or_default(),
            client_secret: Secret::new(client_secret.value.unwrap_or_default()),
            workspace_host: or_never_sent(workspace_host),
            email: or_never_sent(email),
            password: Secret::new(or_never_sent(password)),
        })
    }

    /// The same account logging in as another user: for a sign-up, whose new user is the one
    /// signed up.
    pub(crate) fn signing_up(self, email: &str, password: Secret) -> Self {
        Self {
            email: email.to_owned(),
            password,
            ..self
        }
    }
}

/// The layer for `account`, joined to the session `settings` name. It renews only when asked:
/// a command's process ends with its command.
pub(crate) fn layer(account: &Account, settings: &Settings) -> Result<IqmAuth, Failure> {
    let mut builder = IqmAuth::builder()
        .client_credentials(&account.client_id, account.client_secret.expose())
        .workspace_host(&account.workspace_host)
        .credentials(&account.email, account.password.expose())
        .background_renewal(false);
    if let Some(base_url) = &account.base_url {
        builder = builder.base_url(base_url);
    }
    if let Some(path) = &settings.store {
        builder = builder.token_store(Arc::new(FileTokenStore::new(path)));
    }
    if let Some(url) = &settings.redis {
        let mut shared = RedisSession::builder(url).encryption_keys(encryption_keys()?);
        if let Some(namespace) = &settings.namespace {
            shared = shared.namespace(namespace);
        }
        let shared = shared.build().map_err(|err| {
            let setting = match err {
                ConfigError::InvalidNamespace(_) => "--namespace, IQM_REDIS_NAMESPACE",
                _ => "--redis, IQM_REDIS_URL",
            };
            Failure::Config(format!("{err} ({setting})"))
        })?;
        builder = builder.shared_session(shared);
    }
    builder
        .build()
        .map_err(|err| Failure::Config(err.to_string()))
}

/// `IQM_REDIS_KEYS`: 32-byte keys as 64 hex digits each, comma-separated. A malformed one is
/// named by its position, never shown.
fn encryption_keys() -> Result<Vec<[u8; 32]>, Failure> {
    let Some(keys) = std::env::var("IQM_REDIS_KEYS")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(Vec::new());
    };
    keys.split(',')
        .enumerate()
        .map(|(i, key)| {
            parse_key(key.trim()).ok_or_else(|| {
                Failure::Config(format!(
                    "IQM_REDIS_KEYS: key {} is not 64 hex digits (32 bytes)",
                    i + 1
                ))
            })
        })
        .collect()
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// The Redis URL as it may be shown: without user info, so without a password.
pub(crate) fn shown_redis_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            // Only fails for URLs that cannot have user info, which then hold none.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_64_hex_digits() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).map(|k| k[31]), Some(0xff));
        assert_eq!(parse_key(&hex[2..]), None);
        assert_eq!(parse_key(&("zz".to_owned() + &hex[2..])), None);
        assert_eq!(parse_key(&"é".repeat(32)), None);
    }

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        assert_eq!(
            shown_redis_url("redis://user:hunter2@127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            shown_redis_url("not a url hunter2"),
            "(a URL that does not parse)"
        );
    }
}
