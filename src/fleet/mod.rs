//! One IQM session for a whole fleet of replicas: the [`SessionCoordinator`] trait the session
//! talks to, an in-memory coordinator, and (feature `redis`) [`RedisSession`].
//!
//! The protocol, kept by every coordinator:
//! - The shared set carries a generation that only ever grows (a logout removes the set but
//!   keeps counting), so a replica tells a set other than its own by the number alone.
//! - One replica at a time holds the lease, the right to renew; the others wait for its set; it expires by itself, so a
//!   crashed holder does not wedge the fleet. Each lease has a fencing value of its own.
//! - A set is published only by the lease's holder, and only if the shared generation is still
//!   the one it renewed from: a holder whose lease ran out cannot overwrite a newer set.
//! - Before presenting a refresh token, the holder marks the set "refreshing"; a replica that
//!   takes over a set so marked logs in instead, so a rotated refresh token is never presented
//!   twice.
//! - A holder whose renewal failed pauses the fleet's renewals, so an outage costs the auth
//!   calls of one replica, not of every replica in turn.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod seal;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::StoredTokens;

#[cfg(feature = "redis")]
pub use self::redis::{RedisSession, RedisSessionBuilder};

/// The shared session as a coordinator read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedTokens {
    /// The shared generation: it grows with every published set and every logout.
    pub generation: u64,
    /// The token set, `None` when there is none (never published, logged out) or it cannot be
    /// read (a foreign format, or encrypted with another key).
    pub tokens: Option<StoredTokens>,
    /// Whether the holder of the lease was about to present this set's refresh token: it may
    /// have been spent, so it is not presented again.
    pub refreshing: bool,
    /// Whether something was stored that could not be read as a token set.
    pub unreadable: bool,
    /// How long the fleet's renewals still pause after the last holder's renewal failed.
    pub paused_for: Option<Duration>,
}

impl SharedTokens {
    /// A readable shared set.
    pub fn new(generation: u64, tokens: Option<StoredTokens>, refreshing: bool) -> Self {
        Self {
            generation,
            tokens,
            refreshing,
            unreadable: false,
            paused_for: None,
        }
    }

    /// The same, with the fleet's renewals paused for `pause` more.
    pub fn paused(self, pause: Duration) -> Self {
        Self {
            paused_for: (!pause.is_zero()).then_some(pause),
            ..self
        }
    }

    /// A shared session holding something that is not a token set this layer can read.
    pub fn unreadable(generation: u64) -> Self {
        Self {
            generation,
            tokens: None,
            refreshing: false,
            unreadable: true,
            paused_for: None,
        }
    }
}

/// The right to renew the shared session, held by one replica at a time until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing value: unique to this taking of the lease.
    pub fence: String,
}

/// Why a coordinator could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("the shared IQM session is unavailable: {0}")]
pub struct CoordinatorError(pub String);

/// Where the replicas of a service share one IQM session. [`RedisSession`] is the one to use
/// across processes; [`MemoryCoordinator`] shares a session between layers in one process (for
/// tests). Every method takes the `scope` the session lives under: one per IQM account.
///
/// The layer consults it only when it needs a token (none cached, due for renewal, or answered
/// 401), never on the hot path. Each call is given a short timeout, and a coordinator that fails
/// is logged once per outage and bypassed: each replica then renews on its own.
#[async_trait::async_trait]
pub trait SessionCoordinator: Send + Sync + fmt::Debug + 'static {
    /// The scope set by the user, if any; otherwise the layer derives one from its base URL,
    /// workspace host and user.
    fn namespace(&self) -> Option<&str>;

    /// How long a lease lasts.
    fn lease_ttl(&self) -> Duration;

    /// The shared session, or `None` if nothing was ever stored.
    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError>;

    /// Takes the lease if no one holds it.
    async fn try_lease(&self, scope: &str) -> Result<Option<Lease>, CoordinatorError>;

    /// Marks the set of `generation` as "refreshing", if `lease` is still held and the shared
    /// generation is still `generation`. Returns whether it did.
    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError>;

    /// Publishes `tokens` as the next generation, if `lease` is still held and the shared
    /// generation is still `expected`. Returns the new generation, or `None` if either was not.
    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        expected: u64,
        tokens: &StoredTokens,
    ) -> Result<Option<u64>, CoordinatorError>;

    /// Pauses the fleet's renewals for `pause` after the holder of `lease` failed to renew, if
    /// it still holds the lease: until then, replicas that need a token fail at once instead of
    /// calling IQM, so a fleet in an outage spends the auth calls of one replica, not of all.
    /// A published set ends the pause.
    async fn pause(
        &self,
        scope: &str,
        lease: &Lease,
        pause: Duration,
    ) -> Result<(), CoordinatorError>;

    /// Waits until the shared generation differs from `seen` (another replica published, or
    /// logged out), for at most `timeout`, and returns the shared session as it then stands.
    /// The default looks every 25 ms, doubling to 400 ms; a coordinator with a way to be told
    /// (pub/sub, say) may answer sooner.
    async fn wait_for_newer(
        &self,
        scope: &str,
        seen: u64,
        timeout: Duration,
    ) -> Result<Option<SharedTokens>, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = Duration::from_millis(25);
        loop {
            let shared = self.read(scope).await?;
            let now = tokio::time::Instant::now();
            if shared.as_ref().map_or(0, |s| s.generation) != seen || now >= deadline {
                return Ok(shared);
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(Duration::from_millis(400));
        }
    }

    /// Gives the lease up, if it is still held.
    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError>;

    /// Removes the shared set (a logout), moving the generation on.
    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError>;
}

/// A [`SessionCoordinator`] in memory: layers in one process that share it share one session.
/// For tests of code that runs with a shared session; across processes use [`RedisSession`].
/// Its leases expire on the real monotonic clock (`std::time::Instant`), not on tokio's: under
/// paused time they never run out.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
/// use iqm_auth::MemoryCoordinator;
///
/// let fleet = MemoryCoordinator::default();
/// let first = iqm.auth_builder().shared_session(fleet.clone()).build()?;
/// let second = iqm.auth_builder().shared_session(fleet).build()?;
/// first.access_token().await?;
/// second.access_token().await?; // takes the shared session: no login of its own
/// assert_eq!(iqm.logins(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryCoordinator {
    scopes: Arc<Mutex<HashMap<String, MemoryScope>>>,
    lease_ttl: Duration,
}

#[derive(Debug, Default)]
struct MemoryScope {
    generation: u64,
    tokens: Option<StoredTokens>,
    refreshing: bool,
    paused_until: Option<Instant>,
    lease: Option<(String, Instant)>,
    fences: u64,
}

impl MemoryScope {
    fn holds(&self, lease: &Lease) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|(fence, until)| *fence == lease.fence && Instant::now() < *until)
    }
}

impl Default for MemoryCoordinator {
    fn default() -> Self {
        Self::new(DEFAULT_LEASE_TTL)
    }
}

/// How long a lease lasts unless set otherwise: longer than the default acquisition budget
/// (15 s), so a holder never loses its lease while it still works within its budget.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);

impl MemoryCoordinator {
    /// A coordinator whose leases last `lease_ttl`.
    pub fn new(lease_ttl: Duration) -> Self {
        Self {
            scopes: Arc::default(),
            lease_ttl,
        }
    }
}

#[async_trait::async_trait]
impl SessionCoordinator for MemoryCoordinator {
    fn namespace(&self) -> Option<&str> {
        None
    }

    fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError> {
        let scopes = self.scopes.lock();
        let now = Instant::now();
        Ok(scopes.get(scope).map(|s| {
            let pause = s
                .paused_until
                .map_or(Duration::ZERO, |until| until - now.min(until));
            SharedTokens::new(s.generation, s.tokens.clone(), s.refreshing).paused(pause)
        }))
    }

    async fn try_lease(&self, scope: &str) -> Result<Option<Lease>, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scopes.entry(scope.to_owned()).or_default();
        let now = Instant::now();
        if state.lease.as_ref().is_some_and(|(_, until)| now < *until) {
            return Ok(None);
        }
        state.fences += 1;
        let fence = format!("memory:{}", state.fences);
        state.lease = Some((fence.clone(), now + self.lease_ttl));
        Ok(Some(Lease { fence }))
    }

    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scopes.entry(scope.to_owned()).or_default();
        let marked = state.holds(lease) && state.generation == generation;
        if marked {
            state.refreshing = true;
        }
        Ok(marked)
    }

    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        expected: u64,
        tokens: &StoredTokens,
    ) -> Result<Option<u64>, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scopes.entry(scope.to_owned()).or_default();
        if !state.holds(lease) || state.generation != expected {
            return Ok(None);
        }
        state.generation += 1;
        state.tokens = Some(tokens.clone());
        state.refreshing = false;
        state.paused_until = None;
        Ok(Some(state.generation))
    }

    async fn pause(
        &self,
        scope: &str,
        lease: &Lease,
        pause: Duration,
    ) -> Result<(), CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scopes.entry(scope.to_owned()).or_default();
        if state.holds(lease) {
            state.paused_until = Instant::now().checked_add(pause);
        }
        Ok(())
    }

    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError> {
        let mut scopes = self.scopes.lock();
        if let Some(state) = scopes.get_mut(scope) {
            if state.holds(lease) {
                state.lease = None;
            }
        }
        Ok(())
    }

    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scopes.entry(scope.to_owned()).or_default();
        state.generation += 1;
        state.tokens = None;
        state.refreshing = false;
        state.paused_until = None;
        Ok(())
    }
}
