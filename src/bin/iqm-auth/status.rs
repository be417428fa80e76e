//! `status`: the account and what its session holds, read without an auth call. Nothing here
//! ever holds a secret: the library's status reports tokens by their workspace and lifetime.

use std::io::Write;
use std::time::Duration;

use iqm_auth::{IqmAuth, LeaseState, SessionStatus, SharedStatus, TokenStatus};
use serde_json::{Map, Value, json};

use crate::Done;
use crate::cli::Settings;
use crate::failure::Failure;
use crate::settings::{Account, shown_redis_url};
use crate::shared::redis_unreachable;

pub(crate) async fn show(
    auth: &IqmAuth,
    account: &Account,
    settings: &Settings,
    json: bool,
) -> Result<Done, Failure> {
    let status = auth.status().await;
    let report = Report {
        auth,
        account,
        settings,
        status: &status,
    };
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&report.json())
            .map_err(|err| Failure::Output(std::io::Error::other(err)))?;
        writeln!(out, "{text}")?;
    } else {
        report.write_text(&mut out)?;
    }
    out.flush()?;
    match &status.shared {
        Some(Err(err)) => Err(redis_unreachable(err)),
        _ => Ok(Done::Exit),
    }
}

struct Report<'a> {
    auth: &'a IqmAuth,
    account: &'a Account,
    settings: &'a Settings,
    status: &'a SessionStatus,
}

/// Where a live token was found.
enum Held {
    Shared(TokenStatus),
    Store(TokenStatus),
}

impl Report<'_> {
    fn shared(&self) -> Option<&SharedStatus> {
        self.status.shared.as_ref()?.as_ref().ok()
    }

    /// The live token the next command would use without an auth call, if any: the shared
    /// session's before the store's, as the layer takes them.
    fn held(&self) -> Option<Held> {
        let shared = self.shared().and_then(|shared| shared.tokens);
        if let Some(tokens) = shared.filter(TokenStatus::is_usable) {
            return Some(Held::Shared(tokens));
        }
        match &self.status.stored {
            Ok(Some(tokens)) if tokens.is_usable() => Some(Held::Store(*tokens)),
            _ => None,
        }
    }

    fn redis(&self) -> Option<(String, Option<&str>)> {
        let url = self.settings.redis.as_deref()?;
        Some((shown_redis_url(url), self.settings.namespace.as_deref()))
    }

    fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "user:            {}", self.account.email)?;
        writeln!(out, "workspace host:  {}", self.account.workspace_host)?;
        writeln!(out, "base URL:        {}", self.auth.base_url())?;
        let token = match self.held() {
            Some(Held::Shared(tokens)) => format!("{}, in the shared session", live(&tokens)),
            Some(Held::Store(tokens)) => format!("{}, in the token store", live(&tokens)),
            None => "none live: the next command logs in (or refreshes)".to_owned(),
        };
        writeln!(out, "token:           {token}")?;
        match &self.settings.store {
            None => writeln!(out, "token store:     none (--store, IQM_TOKEN_STORE)")?,
            Some(path) => {
                writeln!(out, "token store:     {}", path.display())?;
                let set = match &self.status.stored {
                    Ok(None) => "none".to_owned(),
                    Ok(Some(tokens)) => set_text(tokens),
                    Err(err) => format!("unreadable: {err}"),
                };
                writeln!(out, "  set:           {set}")?;
            }
        }
        let Some((url, namespace)) = self.redis() else {
            return writeln!(out, "shared session:  none (--redis, IQM_REDIS_URL)");
        };
        let namespace = namespace.map_or(String::new(), |n| format!(" (namespace {n})"));
        writeln!(out, "shared session:  {url}{namespace}")?;
        let shared = match &self.status.shared {
            Some(Ok(shared)) => shared,
            Some(Err(err)) => return writeln!(out, "  unreachable:   {err}"),
            None => return Ok(()),
        };
        let epoch = match shared.epoch.as_str() {
            "" => String::new(),
            epoch => format!(" (epoch {epoch})"),
        };
        writeln!(out, "  generation:    {}{epoch}", shared.generation)?;
        let set = match (&shared.tokens, shared.obtained_ago) {
            (Some(tokens), Some(ago)) => {
                format!("{}, obtained {} ago", set_text(tokens), human(ago))
            }
            (Some(tokens), None) => set_text(tokens),
            (None, _) if shared.foreign_key => {
                "sealed under an encryption key not in IQM_REDIS_KEYS".to_owned()
            }
            (None, _) if shared.unreadable => "unreadable".to_owned(),
            (None, _) => "none".to_owned(),
        };
        let refreshing = if shared.refreshing {
            "; its refresh token is being presented"
        } else {
            ""
        };
        writeln!(out, "  set:           {set}{refreshing}")?;
        let lease = match shared.lease {
            LeaseState::Free => "free".to_owned(),
            LeaseState::Held { expires_in } => format!("held, {} left", human(expires_in)),
            _ => "unknown".to_owned(),
        };
        writeln!(out, "  lease:         {lease}")?;
        let renewals = match shared.paused_for {
            Some(pause) => format!("paused {} more", human(pause)),
            None => "not paused".to_owned(),
        };
        writeln!(
            out,
            "  renewals:      {renewals}; {} failed in a row",
            shared.failures_in_a_row
        )?;
        writeln!(
            out,
            "  replicas:      {} read it in the last hour",
            shared.replicas
        )
    }

    fn json(&self) -> Value {
        let token = match self.held() {
            Some(Held::Shared(tokens)) => held_json(&tokens, "shared"),
            Some(Held::Store(tokens)) => held_json(&tokens, "store"),
            None => json!({ "held": false }),
        };
        let store = self.settings.store.as_ref().map(|path| {
            let (set, error) = match &self.status.stored {
                Ok(set) => (set.as_ref().map(set_json), None),
                Err(err) => (None, Some(err.to_string())),
            };
            json!({ "path": path, "set": set, "error": error })
        });
        let shared = self.redis().map(|(url, namespace)| {
            let mut fields = Map::from_iter([
                ("url".to_owned(), json!(url)),
                ("namespace".to_owned(), json!(namespace)),
            ]);
            match &self.status.shared {
                Some(Ok(status)) => {
                    fields.insert("reachable".to_owned(), json!(true));
                    fields.extend(shared_json(status));
                }
                Some(Err(err)) => {
                    fields.insert("reachable".to_owned(), json!(false));
                    fields.insert("error".to_owned(), json!(err.to_string()));
                }
                None => {}
            }
            Value::Object(fields)
        });
        json!({
            "account": {
                "user": self.account.email,
                "workspace_host": self.account.workspace_host,
                "base_url": self.auth.base_url().as_str(),
            },
            "token": token,
            "store": store,
            "shared": shared,
        })
    }
}

fn live(tokens: &TokenStatus) -> String {
    format!(
        "live for {} (owId {})",
        human(tokens.expires_in),
        tokens.ow_id
    )
}

fn set_text(tokens: &TokenStatus) -> String {
    let whose = if tokens.account_matches {
        "this account's"
    } else {
        "another account's (ignored)"
    };
    let life = if tokens.expires_in.is_zero() {
        "expired".to_owned()
    } else {
        format!("live for {}", human(tokens.expires_in))
    };
    let refresh = if tokens.has_refresh_token {
        "with a refresh token"
    } else {
        "without a refresh token"
    };
    format!("{whose}, {life} (owId {}), {refresh}", tokens.ow_id)
}

fn held_json(tokens: &TokenStatus, source: &str) -> Value {
    json!({
        "held": true,
        "source": source,
        "owId": tokens.ow_id,
        "expires_in": tokens.expires_in.as_secs(),
    })
}

fn set_json(tokens: &TokenStatus) -> Value {
    json!({
        "owId": tokens.ow_id,
        "expires_in": tokens.expires_in.as_secs(),
        "has_refresh_token": tokens.has_refresh_token,
        "this_account": tokens.account_matches,
    })
}

fn shared_json(shared: &SharedStatus) -> Map<String, Value> {
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs());
    let lease = match shared.lease {
        LeaseState::Free => json!({ "held": false }),
        LeaseState::Held { expires_in } => {
            json!({ "held": true, "expires_in": expires_in.as_secs() })
        }
        _ => Value::Null,
    };
    Map::from_iter(
        [
            ("generation", json!(shared.generation)),
            ("epoch", json!(shared.epoch)),
            ("set", json!(shared.tokens.as_ref().map(set_json))),
            ("obtained_ago", json!(seconds(shared.obtained_ago))),
            ("refreshing", json!(shared.refreshing)),
            ("unreadable", json!(shared.unreadable)),
            ("sealed_with_another_key", json!(shared.foreign_key)),
            ("lease", lease),
            ("paused_for", json!(seconds(shared.paused_for))),
            ("failed_renewals_in_a_row", json!(shared.failures_in_a_row)),
            ("replicas", json!(shared.replicas)),
        ]
        .map(|(key, value)| (key.to_owned(), value)),
    )
}

/// A duration for a person: "9h 59m 58s", "14s".
fn human(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m {seconds}s"),
        _ => format!("{hours}h {minutes}m {seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(human(Duration::from_millis(14_900)), "14s");
        assert_eq!(human(Duration::from_secs(61)), "1m 1s");
        assert_eq!(human(Duration::from_secs(35_998)), "9h 59m 58s");
    }
}
