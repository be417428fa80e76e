//! [`RedisSession`]: the shared session in Redis (or any server speaking its protocol, such as
//! Valkey), kept by Lua scripts so that every check-and-set is one atomic step.
//!
//! Where: one server ([`RedisSession::builder`]), a Redis Cluster ([`RedisSession::cluster`]:
//! every key of a scope shares one hash tag, so each script runs on the primary owning that
//! slot) or a primary watched by Sentinel ([`RedisSession::sentinel`], failovers followed).
//! A single-server URL pointed at one node of a cluster does not work: a node that does not
//! own the slot answers `MOVED`, and the replicas then renew on their own.
//!
//! Keys, under `iqm-auth:{<scope>}:` (the braces keep them in one cluster slot):
//! - `session`: a hash of `epoch` (made with the session), `gen` (the shared generation), `set`
//!   (the sealed token set), `key` (the id of the key it is sealed under), `expires_at` and `published_at` (on
//!   Redis's clock), `refreshing` (set while the lease holder presents the set's refresh token),
//!   `failures` (the holders' renewals failed in a row) and `paused_until` (on Redis's clock);
//! - `lease`: the fencing value of the replica holding the lease, expiring by itself after the
//!   lease TTL;
//! - `replicas`: the names of the replicas that read the session in the last hour, by Redis
//!   time: how many share the account's budget when Redis is out of reach;
//! - `calls` (a sorted set of the auth calls of the last minute not given back, by Redis time)
//!   and `calls_full_at`: the fleet's budget for failed auth calls.
//!
//! Key names hold no secret: the scope is the account's fingerprint (a keyed hash), after the
//! namespace the user chose if any.

mod connection;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use self::connection::{Connection, Target};
use self::scripts::Scripts;
use super::seal::Sealer;
use super::{
    CallAllowance, CoordinatorError, DEFAULT_LEASE_TTL, Failure, Lease, Publication,
    SessionCoordinator, SharedTokens,
};
use crate::error::ConfigError;

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
                url: shown,
                namespace: self.namespace,
                lease_ttl: self.lease_ttl.max(Duration::from_millis(100)),
                sealer: Sealer::new(&self.encryption_keys),
                scripts: Scripts::new(),
            }),
        })
    }
}

/// One IQM session for every replica of a service, kept in Redis (feature `redis`).
///
/// Give every replica's [`IqmAuthBuilder`](crate::IqmAuthBuilder) the same Redis and namespace
/// with [`shared_session`](crate::IqmAuthBuilder::shared_session): a cold fleet logs in once,
/// renews once per token lifetime, and recovers from a revocation with one renewal, whatever
/// its size. Requests are still served from each replica's own cache: Redis is consulted only
/// when a replica needs a token. Redis down is not IQM down: each replica then renews on its
/// own, and the fleet converges again at the next renewal once Redis is back.
///
/// ```
/// use std::time::Duration;
///
/// let shared = iqm_auth::RedisSession::builder("redis://127.0.0.1:6379/0")
///     .namespace("acme-prod")
///     .lease_ttl(Duration::from_secs(20))
///     .encryption_key([7u8; 32])
///     .build()?; // sends nothing
/// let auth = iqm_auth::IqmAuth::builder()
///     .client_credentials("client-id", "client-secret")
///     .workspace_host("acme.iqm.com")
///     .credentials("ops@acme.com", "password")
///     .shared_session(shared)
///     .build()?;
/// # let _ = auth;
/// # Ok::<(), iqm_auth::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RedisSession {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    /// The URL without user info, for `Debug`.
    url: String,
    namespace: Option<String>,
    lease_ttl: Duration,
    sealer: Sealer,
    scripts: Scripts,
}

impl fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisSession")
            .field("url", &inner.url)
            .field("namespace", &inner.namespace)
            .field("lease_ttl", &inner.lease_ttl)
            .field("sealer", &inner.sealer)
            .finish_non_exhaustive()
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

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        scope: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, CoordinatorError> {
        let keys: Vec<String> = keys.iter().map(|key| key_name(scope, key)).collect();
        self.inner.connection.run(script, &keys, args).await
    }
}

fn key_name(scope: &str, key: &str) -> String {
    format!("iqm-auth:{{{scope}}}:{key}")
}

#[async_trait::async_trait]
impl SessionCoordinator for RedisSession {
    fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError> {
        type Fields = (
            String,
            Vec<u8>,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        );
        let fields: Option<Fields> = self
            .run(
                &self.inner.scripts.read,
                scope,
                &["session", "replicas"],
                &[super::process_name().as_bytes()],
            )
            .await?;
        let Some((
            generation,
            set,
            refreshing,
            paused,
            expires,
            key,
            failures,
            epoch,
            replicas,
            published,
        )) = fields
        else {
            return Ok(None);
        };
        let sealer = &self.inner.sealer;
        let generation = generation.parse().unwrap_or(0);
        let mut shared = if set.is_empty() {
            SharedTokens::new(generation, None, false)
        } else if !sealer.knows_key(&key) {
            SharedTokens::sealed_with_another_key(generation)
        } else {
            match sealer.open(scope, &set) {
                Some(tokens) => SharedTokens::new(generation, Some(tokens), !refreshing.is_empty()),
                None => SharedTokens::unreadable(generation),
            }
        };
        if let Ok(expires_ms) = expires.parse::<u64>() {
            shared = shared.expiring_in(Duration::from_millis(expires_ms));
        }
        if let Ok(published_ms) = published.parse::<u64>() {
            shared = shared.published(Duration::from_millis(published_ms));
        }
        let paused = Duration::from_millis(paused.parse().unwrap_or(0));
        Ok(Some(
            shared
                .in_epoch(epoch)
                .paused(paused)
                .with_failures(failures.parse().unwrap_or(0))
                .with_replicas(replicas.parse().unwrap_or(0)),
        ))
    }

    async fn generation(&self, scope: &str) -> Result<u64, CoordinatorError> {
        self.run(&self.inner.scripts.generation, scope, &["session"], &[])
            .await
    }

    async fn try_lease(&self, scope: &str, lease: &Lease) -> Result<bool, CoordinatorError> {
        let ttl_ms = self.inner.lease_ttl.as_millis().max(1).to_string();
        let held: i64 = self
            .run(
                &self.inner.scripts.try_lease,
                scope,
                &["lease"],
                &[lease.fence.as_bytes(), ttl_ms.as_bytes()],
            )
            .await?;
        Ok(held == 1)
    }

    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError> {
        let marked: i64 = self
            .run(
                &self.inner.scripts.mark_refreshing,
                scope,
                &["session", "lease"],
                &[lease.fence.as_bytes(), generation.to_string().as_bytes()],
            )
            .await?;
        Ok(marked == 1)
    }

    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        publication: &Publication,
    ) -> Result<Option<u64>, CoordinatorError> {
        let sealer = &self.inner.sealer;
        let sealed = sealer.seal(scope, &publication.tokens);
        let lifetime_ms = publication.expires_in.as_millis().min(u128::from(u32::MAX));
        self.run(
            &self.inner.scripts.publish,
            scope,
            &["session", "lease"],
            &[
                lease.fence.as_bytes(),
                publication.expected.to_string().as_bytes(),
                &sealed,
                publication.floor.to_string().as_bytes(),
                lifetime_ms.to_string().as_bytes(),
                sealer.sealing_key_id().as_bytes(),
                sealer.key_ids().as_bytes(),
                super::process_name().as_bytes(),
            ],
        )
        .await
    }

    async fn record_failure(
        &self,
        scope: &str,
        lease: &Lease,
        failure: &Failure,
    ) -> Result<(), CoordinatorError> {
        let pause_ms = failure
            .pause
            .as_millis()
            .min(u128::from(u32::MAX))
            .to_string();
        let _: i64 = self
            .run(
                &self.inner.scripts.record_failure,
                scope,
                &["session", "lease"],
                &[
                    lease.fence.as_bytes(),
                    pause_ms.as_bytes(),
                    super::process_name().as_bytes(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn reserve_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        let wait: String = self
            .run(
                &self.inner.scripts.reserve_call,
                scope,
                &["calls", "calls_full_at"],
                &[
                    call.as_bytes(),
                    allowance.per_minute.to_string().as_bytes(),
                    allowance.burst.to_string().as_bytes(),
                ],
            )
            .await?;
        let wait_ms: u64 = wait.parse().unwrap_or(0);
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn refund_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        let _: i64 = self
            .run(
                &self.inner.scripts.refund_call,
                scope,
                &["calls", "calls_full_at"],
                &[call.as_bytes(), allowance.per_minute.to_string().as_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError> {
        let _: i64 = self
            .run(
                &self.inner.scripts.release,
                scope,
                &["lease"],
                &[lease.fence.as_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError> {
        let _: i64 = self
            .run(
                &self.inner.scripts.clear,
                scope,
                &["session"],
                &[super::process_name().as_bytes()],
            )
            .await?;
        Ok(())
    }
}
