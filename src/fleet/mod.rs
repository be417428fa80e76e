//! One IQM session for a whole fleet of replicas: the [`SessionCoordinator`] trait the session
//! talks to, an in-memory coordinator, and (feature `redis`) [`RedisSession`].
//!
//! The protocol, kept by every coordinator:
//! - The shared set carries a generation that only ever grows within the session's epoch (a
//!   logout removes the set but keeps counting; a coordinator that lost everything starts a new
//!   epoch). Each replica remembers the highest generation it has seen in each epoch: a shared
//!   set below it was restored from an older copy (a snapshot, a lagging replica) and its
//!   refresh token may have been spent, so it is never refreshed, and the next set is published
//!   above every generation seen.
//! - One replica at a time holds the lease, the right to renew; the others wait for its set; it
//!   expires by itself, so a crashed holder does not wedge the fleet. The replica chooses the
//!   lease's fencing value, so after a call whose answer was lost it can recognise (or release)
//!   a lease it may hold.
//! - A set is published only by the lease's holder, and only if the shared generation is still
//!   the one it renewed from: a holder whose lease ran out cannot overwrite a newer set.
//! - Before presenting a refresh token, the holder marks the set "refreshing"; a replica that
//!   takes over a set so marked logs in instead, so a rotated refresh token is never presented
//!   twice.
//! - Every auth call is taken from the fleet's budget for failed calls before it is sent, and
//!   given back if it yields a token; a holder whose renewal failed pauses the fleet's renewals,
//!   longer with each failure in a row. So an outage costs the auth calls of one process, not
//!   of every replica in turn.
//! - Expiry is shared as a remaining lifetime on the coordinator's clock, so replicas whose
//!   clocks differ agree on when a set expires.
//! - A 429 closes IQM's window for the fleet: the coordinator keeps its end, tells it with every
//!   read, and gives no turn inside it.
//! - With a request rate, each IQM request takes its turn in one fleet-wide line before it is
//!   sent (one call when its turn is now; one more to confirm a turn it waited for); auth calls
//!   go before the API requests still waiting, which move back.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod seal;

mod line;
mod memory;
mod pace;
mod shared;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::status::LeaseState;
use crate::store::StoredTokens;

pub use self::memory::MemoryCoordinator;
pub use self::pace::{Pace, Turn};
#[cfg(feature = "redis")]
pub use self::redis::{RedisSession, RedisSessionBuilder};
pub use self::shared::SharedTokens;

/// The right to renew the shared session, held by one replica at a time until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing value, chosen by the replica that asks for the lease: unique to this taking
    /// of the lease, so that a replica that did not hear whether it got the lease can tell (and
    /// release) it.
    pub fence: String,
}

impl Lease {
    /// A lease value no other replica or taking uses: this process's random name and a counter.
    pub fn unique() -> Self {
        Self {
            fence: unique_name(),
        }
    }
}

/// A name no other replica or call uses: this process's random name and a counter.
pub(crate) fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let taking = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}:{taking}", process_name())
}

/// A name for this process, different between processes and runs.
pub(crate) fn process_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        let random =
            RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
        format!("{:x}-{random:016x}", std::process::id())
    })
}

/// A token set the lease's holder publishes to the fleet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Publication {
    /// The shared generation the holder renewed from: the set is published only if it is still
    /// the shared one.
    pub expected: u64,
    /// The highest generation the holder has seen: the new generation is above it and above
    /// the shared one, so a set restored from an older copy is never numbered like a newer one.
    pub floor: u64,
    /// The token set.
    pub tokens: StoredTokens,
    /// How long its access token lives from now.
    pub expires_in: Duration,
    /// How long ago the auth call that obtained it was sent.
    pub obtained_ago: Duration,
}

/// What the lease's holder records after its renewal failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failure {
    /// How long the fleet's renewals pause.
    pub pause: Duration,
}

/// The fleet's budget for failed auth calls: at most `per_minute` in any minute, and at most
/// `burst` in a row before it refills at `per_minute` a minute (the layer's
/// [`auth_call_budget`](crate::IqmAuthBuilder::auth_call_budget)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallAllowance {
    /// Failed calls a minute.
    pub per_minute: u32,
    /// Failed calls in a row.
    pub burst: u32,
}

impl CallAllowance {
    /// At most `per_minute` failed calls a minute, `burst` in a row (each at least 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
        }
    }
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
/// 401), never on the hot path. Each call is given a short timeout. A coordinator that fails is
/// logged once per outage and retried while the replica waits for a token; a replica renews on
/// its own only when the coordinator stayed unreachable, and then never refreshes a shared set.
#[async_trait::async_trait]
pub trait SessionCoordinator: Send + Sync + fmt::Debug + 'static {
    /// The name the user set, if any: it groups the sessions of the accounts that use it (each
    /// account still has a session of its own under it).
    fn namespace(&self) -> Option<&str>;

    /// How long a lease lasts.
    fn lease_ttl(&self) -> Duration;

    /// The shared session, or `None` if nothing was ever stored.
    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError>;

    /// The shared generation alone (0 if nothing was ever stored), for waiting cheaply. The
    /// default reads the whole session.
    async fn generation(&self, scope: &str) -> Result<u64, CoordinatorError> {
        Ok(self
            .read(scope)
            .await?
            .map_or(0, |shared| shared.generation))
    }

    /// Takes `lease` if no one holds it, or if it is already this one (a replica that did not
    /// hear the answer to an earlier try asks again with the same lease). Returns whether the
    /// lease is held.
    async fn try_lease(&self, scope: &str, lease: &Lease) -> Result<bool, CoordinatorError>;

    /// Marks the set of `generation` as "refreshing", if `lease` is still held and the shared
    /// generation is still `generation`. Returns whether it did.
    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError>;

    /// Publishes a set as the next generation, above both the shared generation and
    /// [`Publication::floor`], if `lease` is still held, the shared generation is still
    /// [`Publication::expected`], and the set there is one this coordinator may replace.
    /// Returns the new generation, or `None` if not.
    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        publication: &Publication,
    ) -> Result<Option<u64>, CoordinatorError>;

    /// Records that the holder of `lease` failed to renew, if it still holds the lease: counts
    /// the failure in a row, and pauses the fleet's renewals for [`Failure::pause`]. Until then,
    /// replicas that need a token fail at once instead of calling IQM. A published set ends the
    /// pause and the count in a row.
    async fn record_failure(
        &self,
        scope: &str,
        lease: &Lease,
        failure: &Failure,
    ) -> Result<(), CoordinatorError>;

    /// Waits until the shared generation differs from `seen` (another replica published, or
    /// logged out), for at most `timeout`, and returns the shared session as it then stands.
    /// The default polls [`generation`](Self::generation) every 25 ms, doubling to 400 ms, and
    /// reads the session once it changed; a coordinator with a way to be told (pub/sub, say)
    /// may answer sooner.
    async fn wait_for_newer(
        &self,
        scope: &str,
        seen: u64,
        timeout: Duration,
    ) -> Result<Option<SharedTokens>, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = Duration::from_millis(25);
        loop {
            let now = tokio::time::Instant::now();
            if self.generation(scope).await? != seen || now >= deadline {
                return self.read(scope).await;
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(Duration::from_millis(400));
        }
    }

    /// Takes one auth call, named `call` (unique), from the fleet's budget for failed calls,
    /// before it is sent: it counts as failed until it is given back with
    /// [`refund_call`](Self::refund_call) (it yielded a token), so calls that hang or whose
    /// replica crashes count. Returns `None` if it was taken, or how long until one may be.
    /// Every replica's auth calls go through it, so the fleet spends what one process does,
    /// whichever replicas make them. The default takes nothing (no fleet-wide budget: each
    /// replica keeps its own).
    async fn reserve_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        let _ = (scope, call, allowance);
        Ok(None)
    }

    /// Gives back a call taken with [`reserve_call`](Self::reserve_call) that yielded a token.
    async fn refund_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        let _ = (scope, call, allowance);
        Ok(())
    }

    /// Closes IQM's rate-limit window of the account: a replica was answered 429, and no
    /// replica sends a request for `for_` from now (on the coordinator's clock), unless the
    /// window is already closed longer. Returns how long it stays closed. Replicas learn of it
    /// when they read the session ([`SharedTokens::rate_limited_for`]) or take a turn. The
    /// default shares nothing: each replica keeps the windows it met itself.
    async fn close_window(
        &self,
        scope: &str,
        for_: Duration,
    ) -> Result<Duration, CoordinatorError> {
        let _ = scope;
        Ok(for_)
    }

    /// Takes a turn, for the request named `call` (unique), in the fleet's pace: one IQM request
    /// per [`Pace::interval`] fleet-wide, in the order they asked, auth calls before API
    /// requests, none while IQM's window is closed. [`Turn::Now`]: send it; [`Turn::In`]: wait,
    /// then [`confirm_turn`](Self::confirm_turn); [`Turn::Refused`]: its turn would come later
    /// than [`Pace::max_wait`]. `None`: the coordinator keeps no fleet-wide pace (the default),
    /// and each replica paces its own requests.
    async fn take_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Option<Turn>, CoordinatorError> {
        let _ = (scope, call, pace);
        Ok(None)
    }

    /// Confirms a turn taken with [`take_turn`](Self::take_turn) when it comes:
    /// [`Turn::Now`], or [`Turn::In`] if it moved back since (an auth call went first, or IQM's
    /// window closed over it), or [`Turn::Refused`] if it would now come later than
    /// [`Pace::max_wait`] (the time the request has left), the turn given up.
    async fn confirm_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Turn, CoordinatorError> {
        let _ = (scope, call, pace);
        Ok(Turn::Now)
    }

    /// Gives up a turn that has not come (its request was dropped), for the next request.
    async fn cancel_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<(), CoordinatorError> {
        let _ = (scope, call, pace);
        Ok(())
    }

    /// Gives the lease up, if it is still held.
    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError>;

    /// Removes the shared set (a logout), moving the generation on.
    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError>;

    /// Whether a replica holds the lease now, and for how long more: for status displays
    /// ([`IqmAuth::status`](crate::IqmAuth::status)); the protocol never asks. The default
    /// cannot tell ([`LeaseState::Unknown`]).
    async fn lease_state(&self, scope: &str) -> Result<LeaseState, CoordinatorError> {
        let _ = scope;
        Ok(LeaseState::Unknown)
    }
}

/// How long a lease lasts unless set otherwise: longer than the default acquisition budget
/// (15 s), so a holder never loses its lease while it still works within its budget.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);
