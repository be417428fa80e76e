//! How the shared session reaches Redis: a single server, a Redis Cluster or a primary found
//! through Sentinel. Every script call is bounded by the command timeout, and every error is
//! shown without the URLs' passwords.
//!
//! - **Single server**: one [`ConnectionManager`], made on first use; it reconnects by itself.
//! - **Cluster**: the `redis` crate's async cluster client, made on first use. Every key of a
//!   scope shares one hash tag, so each script runs on the one primary owning its slot; the
//!   client follows `MOVED` and `ASK` redirections and slot migrations.
//! - **Sentinel**: see [`sentinel`]: the current primary is asked of the sentinels, and asked
//!   again after a failover.

mod sentinel;

use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, ConnectionInfo, IntoConnectionInfo, Script, ScriptInvocation};

use self::sentinel::Sentinel;
use crate::config::without_user_info;
use crate::error::ConfigError;
use crate::fleet::CoordinatorError;

/// Where the shared session is kept, as the builder was given it.
#[derive(Clone)]
pub(super) enum Target {
    /// One server (or a proxy in front of several): its URL.
    Single(String),
    /// A Redis Cluster: the URLs of some of its nodes, to discover the others from.
    Cluster(Vec<String>),
    /// A primary watched by Sentinel: the sentinels' URLs and the name they know it by.
    Sentinel { urls: Vec<String>, master: String },
}

impl Target {
    /// The target as shown in `Debug` output and errors: URLs without user info.
    pub(super) fn shown(&self) -> String {
        let list = |urls: &[String]| {
            let shown: Vec<String> = urls.iter().map(|url| without_user_info(url)).collect();
            shown.join(", ")
        };
        match self {
            Self::Single(url) => without_user_info(url),
            Self::Cluster(urls) => format!("cluster [{}]", list(urls)),
            Self::Sentinel { urls, master } => format!("sentinel [{}] master {master}", list(urls)),
        }
    }
}

/// A Redis deployment as the session talks to it.
pub(super) struct Connection {
    topology: Topology,
    /// The URLs' passwords, cut out of any Redis error before it is shown.
    passwords: Vec<String>,
    command_timeout: Duration,
}

enum Topology {
    Single {
        client: Client,
        manager: Mutex<Option<ConnectionManager>>,
    },
    Cluster {
        client: ClusterClient,
        connection: tokio::sync::OnceCell<ClusterConnection>,
    },
    Sentinel(Sentinel),
}

/// A URL that does not parse, shown without its user info.
fn invalid(url: &str, err: &redis::RedisError) -> ConfigError {
    ConfigError::InvalidRedisUrl {
        url: without_user_info(url),
        problem: format!("{:?}", err.kind()),
    }
}

/// Each URL's connection info, or the first that does not parse; at least one URL.
fn parse_all(urls: &[String], what: &str) -> Result<Vec<ConnectionInfo>, ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::InvalidRedisUrl {
            url: String::new(),
            problem: format!("no {what} URL given"),
        });
    }
    urls.iter()
        .map(|url| {
            url.as_str()
                .into_connection_info()
                .map_err(|e| invalid(url, &e))
        })
        .collect()
}

fn passwords(infos: &[ConnectionInfo]) -> Vec<String> {
    let mut passwords: Vec<String> = infos
        .iter()
        .filter_map(|info| info.redis_settings().password())
        .filter(|password| !password.is_empty())
        .map(str::to_owned)
        .collect();
    passwords.sort();
    passwords.dedup();
    passwords
}

impl Connection {
    /// A connection to one server through `client`.
    pub(super) fn new(client: Client, command_timeout: Duration) -> Self {
        let passwords = passwords(std::slice::from_ref(client.get_connection_info()));
        Self {
            topology: Topology::Single {
                client,
                manager: Mutex::new(None),
            },
            passwords,
            command_timeout,
        }
    }

    /// Checks `target`'s URLs and prepares its client. Sends nothing.
    pub(super) fn open(target: &Target, command_timeout: Duration) -> Result<Self, ConfigError> {
        match target {
            Target::Single(url) => {
                let client = Client::open(url.as_str()).map_err(|err| invalid(url, &err))?;
                Ok(Self::new(client, command_timeout))
            }
            Target::Cluster(urls) => {
                let infos = parse_all(urls, "cluster node")?;
                let passwords = passwords(&infos);
                let client = ClusterClient::builder(infos)
                    .connection_timeout(command_timeout)
                    .response_timeout(command_timeout)
                    // Redirections and reconnections within one call; the call as a whole is
                    // still bounded by the command timeout.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|err| ConfigError::InvalidRedisUrl {
                        url: target.shown(),
                        problem: format!("{:?}: {}", err.kind(), err.detail().unwrap_or("")),
                    })?;
                Ok(Self {
                    topology: Topology::Cluster {
                        client,
                        connection: tokio::sync::OnceCell::new(),
                    },
                    passwords,
                    command_timeout,
                })
            }
            Target::Sentinel { urls, master } => {
                let infos = parse_all(urls, "sentinel")?;
                let passwords = passwords(&infos);
                let sentinel = Sentinel::new(infos, master, command_timeout).map_err(|err| {
                    ConfigError::InvalidRedisUrl {
                        url: target.shown(),
                        problem: format!("{:?}", err.kind()),
                    }
                })?;
                Ok(Self {
                    topology: Topology::Sentinel(sentinel),
                    passwords,
                    command_timeout,
                })
            }
        }
    }

    fn manager(
        &self,
        client: &Client,
        manager: &Mutex<Option<ConnectionManager>>,
    ) -> redis::RedisResult<ConnectionManager> {
        let mut manager = manager.lock();
        if let Some(manager) = manager.as_ref() {
            return Ok(manager.clone());
        }
        let timeout = Some(self.command_timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let created = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        *manager = Some(created.clone());
        Ok(created)
    }

    /// A Redis error as shown in logs: its kind and message, never a URL's password.
    fn error(&self, err: &redis::RedisError) -> CoordinatorError {
        let mut shown = format!("{:?}: {err}", err.kind());
        for password in &self.passwords {
            shown = shown.replace(password.as_str(), "[redacted]");
        }
        CoordinatorError(shown)
    }

    /// Runs `script` on `keys` (full key names) with `args`, within the command timeout.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, CoordinatorError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        match tokio::time::timeout(self.command_timeout, self.invoke(&invocation)).await {
            Ok(result) => result.map_err(|err| self.error(&err)),
            Err(_) => {
                if let Topology::Sentinel(sentinel) = &self.topology {
                    // A primary that stopped answering may have been replaced: ask again.
                    sentinel.forget_primary();
                }
                Err(CoordinatorError(format!(
                    "no answer within {:?}",
                    self.command_timeout
                )))
            }
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match &self.topology {
            Topology::Single { client, manager } => {
                let mut connection = self.manager(client, manager)?;
                invocation.invoke_async(&mut connection).await
            }
            Topology::Cluster { client, connection } => {
                let mut connection = connection
                    .get_or_try_init(|| client.get_async_connection())
                    .await?
                    .clone();
                invocation.invoke_async(&mut connection).await
            }
            Topology::Sentinel(sentinel) => sentinel.invoke(invocation).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_a_password_of_any_url() {
        let timeout = Duration::from_millis(100);
        let cluster = Target::Cluster(vec![
            "redis://:s3cret-pass@127.0.0.1:7000".to_owned(),
            "redis://:s3cret-pass@127.0.0.1:7001".to_owned(),
        ]);
        let sentinel = Target::Sentinel {
            urls: vec!["redis://:other-pass@127.0.0.1:26379/2".to_owned()],
            master: "mymaster".to_owned(),
        };
        for (target, password) in [(cluster, "s3cret-pass"), (sentinel, "other-pass")] {
            let connection = Connection::open(&target, timeout).unwrap();
            let err = redis::RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                "refused",
                format!("password {password} was wrong"),
            ));
            let shown = connection.error(&err).to_string();
            assert!(!shown.contains(password), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
            assert!(!target.shown().contains(password));
        }
    }
}
