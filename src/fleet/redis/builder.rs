//! [`RedisSessionBuilder`]: where the shared session lives (one server, a cluster, or a primary
//! watched by Sentinel) and how it is kept.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::connection::{Connection, Target};
use super::scripts::Scripts;
use super::{Inner, RedisSession};
use crate::error::ConfigError;
use crate::fleet::DEFAULT_LEASE_TTL;
use crate::fleet::seal::Sealer;

/// How long one Redis call may take before the layer gives up on it for this renewal.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds a [`RedisSession`]. Setters never fail; [`build`](Self::build) checks the URL.
#[derive(Clone)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct RedisSessionBuilder {
    target: Target,
    namespace: Option<String>,
    lease_ttl: Duration,
    encryption_keys: Vec<[u8; 32]>,
    command_timeout: Duration,
}

impl fmt::Debug for RedisSessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionBuilder")
            .field("url", &self.target.shown())
            .field("namespace", &self.namespace)
            .field("lease_ttl", &self.lease_ttl)
            .field("encryption_keys", &self.encryption_keys.len())
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl RedisSessionBuilder {
    /// A name for the sessions of the services that use it, which replicas must share to share
    /// a session. Letters, digits, `.`, `_` and `-`. It only groups: each IQM account (base URL,
    /// client id, workspace host, user) still has a session of its own under it, so accounts
    /// given one namespace never use each other's tokens. Without it, a session is kept under
    /// the account's fingerprint alone.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// How long a replica may hold the right to renew before another may take it over: it
    /// bounds how long a crashed holder can keep the fleet waiting. A holder's own renewal is
    /// given at most this long. Defaults to 20 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Encrypts token sets at rest with XChaCha20-Poly1305 under this key, so that nothing
    /// stored in Redis contains a token's bytes: the same as
    /// [`encryption_keys([key])`](Self::encryption_keys). Defaults to none.
    pub fn encryption_key(self, key: [u8; 32]) -> Self {
        self.encryption_keys([key])
    }

    /// Encrypts token sets at rest under the first key, and opens sets sealed under any of them:
    /// for rotating keys without a login. Roll out `[new, old]` (every replica opens what the
    /// others seal, whichever they run), then `[new]` once no replica seals under the old key.
    ///
    /// A replica never writes over a set sealed under a key it does not hold: it renews for
    /// itself (warned once, counted in [`Stats::shared_unreadable`](crate::Stats)) and leaves
    /// the fleet's set alone; a replica with no key never writes over a sealed set either.
    pub fn encryption_keys(mut self, keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.encryption_keys = keys.into_iter().collect();
        self
    }

    /// How long one Redis call may take before the layer gives up on Redis for that renewal
    /// and renews on its own. Defaults to 500 ms.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Checks the settings. Sends nothing: the connection is made on first use.
    ///
    /// # Errors
    /// [`ConfigError::InvalidRedisUrl`] (never naming a password in the URL) when a URL does
    /// not parse, a cluster or sentinel list is empty, or a cluster's nodes disagree on their
    /// user, password or TLS; or [`ConfigError::InvalidNamespace`].
    pub fn build(self) -> Result<RedisSession, ConfigError> {
        let shown = self.target.shown();
        let connection = Connection::open(&self.target, self.command_timeout)?;
        if let Some(namespace) = &self.namespace {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if namespace.is_empty() || namespace.len() > 128 || !namespace.chars().all(allowed) {
                return Err(ConfigError::InvalidNamespace(namespace.clone()));
            }
        }
        Ok(RedisSession {
            inner: Arc::new(Inner {
                connection,
                clock: Mutex::default(),
                url: shown,
                namespace: self.namespace,
                lease_ttl: self.lease_ttl.max(Duration::from_millis(100)),
                sealer: Sealer::new(&self.encryption_keys),
                scripts: Scripts::new(),
            }),
        })
    }
}

impl RedisSession {
    /// Starts building a session shared through the Redis at `url` (`redis://`, `rediss://`
    /// for TLS, `unix://`).
    pub fn builder(url: impl Into<String>) -> RedisSessionBuilder {
        Self::builder_for(Target::Single(url.into()))
    }

    /// Starts building a session shared through a Redis Cluster, discovered from the nodes at
    /// `urls` (some or all of its primaries and replicas; `redis://` or `rediss://`, database
    /// 0, one user and password for all). Each script runs on the primary owning the scope's
    /// slot: the client follows `MOVED` and `ASK` redirections and the cluster's failovers.
    ///
    /// ```
    /// let shared = iqm_auth::RedisSession::cluster([
    ///     "redis://redis-node-0:6379",
    ///     "redis://redis-node-1:6379",
    ///     "redis://redis-node-2:6379",
    /// ])
    /// .namespace("acme-prod")
    /// .build()?; // sends nothing
    /// # let _ = shared;
    /// # Ok::<(), iqm_auth::ConfigError>(())
    /// ```
    pub fn cluster(urls: impl IntoIterator<Item = impl Into<String>>) -> RedisSessionBuilder {
        Self::builder_for(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// Starts building a session shared through the primary that the sentinels at `urls` know
    /// as `master`. The URLs' user and password are used for the sentinels and the primary
    /// alike; their database number (`redis://host:26379/2`) for the primary. The sentinels
    /// are asked for the primary on first use and again after a failover, which the session
    /// follows as soon as a sentinel announces it (and after a connection error, or a
    /// `READONLY` answer from a demoted primary).
    ///
    /// ```
    /// let shared = iqm_auth::RedisSession::sentinel(
    ///     ["redis://sentinel-0:26379", "redis://sentinel-1:26379", "redis://sentinel-2:26379"],
    ///     "mymaster",
    /// )
    /// .build()?; // sends nothing
    /// # let _ = shared;
    /// # Ok::<(), iqm_auth::ConfigError>(())
    /// ```
    pub fn sentinel(
        urls: impl IntoIterator<Item = impl Into<String>>,
        master: impl Into<String>,
    ) -> RedisSessionBuilder {
        Self::builder_for(Target::Sentinel {
            urls: urls.into_iter().map(Into::into).collect(),
            master: master.into(),
        })
    }

    fn builder_for(target: Target) -> RedisSessionBuilder {
        RedisSessionBuilder {
            target,
            namespace: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            encryption_keys: Vec::new(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}
