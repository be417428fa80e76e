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
//!   (the sealed token set), `key` (the id of the key it is sealed under), `expires_at` and
//!   `obtained_at` (on Redis's clock), `refreshing` (set while the lease holder presents the
//!   set's refresh token), `failures` (the holders' renewals failed in a row) and
//!   `paused_until` (on Redis's clock);
//! - `lease`: the fencing value of the replica holding the lease, expiring by itself after the
//!   lease TTL;
//! - `replicas`: the names of the replicas that read the session in the last hour, by Redis
//!   time: how many share the account's budget when Redis is out of reach;
//! - `calls` (a sorted set of the auth calls of the last minute not given back, by Redis time)
//!   and `calls_full_at`: the fleet's budget for failed auth calls;
//! - `window`: when IQM's rate-limit window opens after a 429 (Redis time), expiring after;
//! - `turns`: with a request rate, the fleet's line of turns (a sorted set of calls by the
//!   Redis time of their turn), kept for one interval after a turn has come.
//!
//! Key names hold no secret: the scope is the account's fingerprint (a keyed hash), after the
//! namespace the user chose if any.

mod builder;
mod connection;
mod inspect;
mod scripts;
mod turns;

pub use self::builder::RedisSessionBuilder;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use redis::Script;

use self::connection::Connection;
use self::scripts::Scripts;
use super::seal::Sealer;
use super::{
    CallAllowance, CoordinatorError, Failure, Lease, Pace, Publication, SessionCoordinator,
    SharedTokens, Turn,
};
use crate::status::LeaseState;

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
    /// Per scope, Redis's clock at the last read (ms) and when its answer arrived.
    clock: Mutex<HashMap<String, (u64, Instant)>>,
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

/// A duration in whole milliseconds, cut at `u32::MAX`.
fn millis(duration: Duration) -> String {
    duration.as_millis().min(u128::from(u32::MAX)).to_string()
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
            String,
            String,
        );
        let fields: Option<Fields> = self
            .run(
                &self.inner.scripts.read,
                scope,
                &["session", "replicas", "window"],
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
            closed,
            redis_now,
        )) = fields
        else {
            return Ok(None);
        };
        if let Ok(redis_now) = redis_now.parse::<u64>() {
            self.inner
                .clock
                .lock()
                .insert(scope.to_owned(), (redis_now, Instant::now()));
        }
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
            shared = shared.obtained(Duration::from_millis(published_ms));
        }
        let paused = Duration::from_millis(paused.parse().unwrap_or(0));
        Ok(Some(
            shared
                .in_epoch(epoch)
                .paused(paused)
                .with_failures(failures.parse().unwrap_or(0))
                .with_replicas(replicas.parse().unwrap_or(0))
                .rate_limited(Duration::from_millis(closed.parse().unwrap_or(0))),
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
        // Redis's clock now, reckoned from the last read's `TIME`: a publish that waits in a
        // stalled Redis must not lengthen the set's life, nor make it look obtained later.
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let redis_now = self
            .inner
            .clock
            .lock()
            .get(scope)
            .map(|(at, read)| at.saturating_add(millis(read.elapsed())));
        let expires_at = redis_now.map_or_else(String::new, |now| {
            now.saturating_add(millis(publication.expires_in))
                .to_string()
        });
        let obtained_ago = millis(publication.obtained_ago);
        let obtained_at = redis_now.map_or_else(String::new, |now| {
            now.saturating_sub(obtained_ago).to_string()
        });
        let publication_id = super::unique_name();
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
                publication_id.as_bytes(),
                expires_at.as_bytes(),
                obtained_ago.to_string().as_bytes(),
                obtained_at.as_bytes(),
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

    async fn close_window(
        &self,
        scope: &str,
        for_: Duration,
    ) -> Result<Duration, CoordinatorError> {
        let closed: String = self
            .run(
                &self.inner.scripts.close_window,
                scope,
                &["window"],
                &[millis(for_).as_bytes()],
            )
            .await?;
        Ok(Duration::from_millis(closed.parse().unwrap_or(0)))
    }

    async fn take_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Option<Turn>, CoordinatorError> {
        let script = &self.inner.scripts.take_turn;
        turns::turn(self, script, scope, call, pace).await.map(Some)
    }

    async fn confirm_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Turn, CoordinatorError> {
        let script = &self.inner.scripts.confirm_turn;
        turns::turn(self, script, scope, call, pace).await
    }

    async fn cancel_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<(), CoordinatorError> {
        let _: i64 = self
            .run(
                &self.inner.scripts.cancel_turn,
                scope,
                &["turns"],
                &[turns::member(call, pace).as_bytes()],
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

    async fn lease_state(&self, scope: &str) -> Result<LeaseState, CoordinatorError> {
        self.inspect_lease(scope).await
    }
}
