//! A renewal through the fleet's shared session: take a set another replica renewed, or take
//! the lease and renew for everyone (see [`lease`](super::lease)), or wait for the replica that
//! holds it. Only renewals come here; the hot path never does.
//!
//! Redis is not IQM: a replica that cannot reach the coordinator keeps trying while it waits,
//! and renews on its own only once the coordinator stayed out of reach for
//! [`UNREACHABLE_GRACE`] (at once when it was already out of reach before this renewal). A
//! proactive renewal, whose token is still valid, keeps serving it and tries again later.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::AuthError;
use crate::fleet::{CallAllowance, CoordinatorError, Lease, SessionCoordinator, SharedTokens};
use crate::secret::Secret;
use crate::stats::RenewReason;
use crate::token::{CachedToken, Freshness};

use super::Session;
use super::acquire::Source;
use super::budget::{CallBudget, Reservation};
use super::lease::UnderLease;
use super::seen::Seen;

/// The longest one wait for another replica's set lasts before the lease is tried again (its
/// holder may have crashed): a quarter of the lease TTL, between these bounds. Waiting polls
/// the generation, quickly at first (see [`SessionCoordinator::wait_for_newer`]): the longer
/// the slice, the fewer commands a long wait costs.
const WAIT_SLICE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

/// The most any coordinator call may take, whatever the coordinator's own timeout: a
/// coordinator that hangs must not hold a request. A wait for a newer set may take this much
/// longer than its slice.
pub(super) const COORDINATOR_CALL_LIMIT: Duration = Duration::from_secs(2);

/// How long the coordinator must stay out of reach before a replica that needs a token renews
/// on its own: a stall (a fork, a failover) shorter than this costs no login.
pub(super) const UNREACHABLE_GRACE: Duration = Duration::from_secs(2);

/// The fewest replicas a replica out of reach of the coordinator assumes it shares the budget
/// for failed calls with: replicas that start together see each other only as they read, and
/// one that never reached Redis has seen none.
pub(super) const ASSUMED_REPLICAS: u32 = 4;

/// How many logged-out access tokens a replica remembers.
const ENDED_KEPT: usize = 4;

/// The pause between tries of a coordinator that did not answer.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(100);

/// The fleet's coordinator, as one session uses it.
pub(crate) struct Fleet {
    pub(super) coordinator: Arc<dyn SessionCoordinator>,
    pub(super) scope: String,
    /// Whether the last call failed: an outage is logged once, not once per renewal, and a
    /// renewal that starts in a known outage does not wait for the coordinator.
    down: AtomicBool,
    /// What this replica has seen of the shared session, per epoch.
    seen: Mutex<Seen>,
    /// The access tokens of the last sessions this replica logged out of, and when its last
    /// logout began.
    ended: Mutex<(Vec<Secret>, Option<std::time::Instant>)>,
    /// Whether a logout's clear did not land: it is made before the next renewal reads.
    owed_clear: AtomicBool,
    /// How long the fleet's budget for failed calls last refused a call for.
    budget_spent: Mutex<Option<Duration>>,
    /// The most replicas the shared session said read it in the last hour (0: not known).
    pub(super) replicas: AtomicU32,
    /// This replica's share of the fleet's budget for failed calls while the coordinator is
    /// out of reach, and the number of replicas it was cut for.
    alone: Mutex<Option<(u32, CallBudget)>>,
    /// A lease taken by a call whose answer was lost: asked for again, or released, later.
    pub(super) uncertain_lease: Mutex<Option<Lease>>,
    /// Whether a set sealed under another key was warned about.
    pub(super) warned_foreign_key: AtomicBool,
    /// Whether a shared set of another account was warned about.
    pub(super) warned_foreign_account: AtomicBool,
}

impl Fleet {
    pub(crate) fn new(coordinator: Arc<dyn SessionCoordinator>, scope: String) -> Self {
        Self {
            coordinator,
            scope,
            down: AtomicBool::new(false),
            seen: Mutex::default(),
            ended: Mutex::default(),
            owed_clear: AtomicBool::new(false),
            replicas: AtomicU32::new(0),
            budget_spent: Mutex::new(None),
            alone: Mutex::new(None),
            uncertain_lease: Mutex::new(None),
            warned_foreign_key: AtomicBool::new(false),
            warned_foreign_account: AtomicBool::new(false),
        }
    }

    /// Notes the shared session as read: what it tells of the fleet.
    pub(super) fn read(&self, shared: &SharedTokens) {
        self.saw(&shared.epoch, shared.generation);
        if shared.refreshing {
            let mut seen = self.seen.lock();
            let known = seen.entry(&shared.epoch);
            known.marked = known.marked.max(Some(shared.generation));
        }
        // The most seen: a share too small costs nothing while IQM answers (only failed
        // calls are counted), one too large lets an outage spend more than the account's.
        self.replicas.fetch_max(shared.replicas, Ordering::Relaxed);
    }

    /// Takes a call from this replica's share of the fleet's budget for failed calls (the
    /// budget split evenly between the most replicas seen, at least [`ASSUMED_REPLICAS`], but
    /// never less than two a minute, two in a row: a refresh and the login that follows it), for
    /// a call made while the coordinator is out of reach. `Err` with how long until
    /// one may be sent.
    pub(super) fn reserve_alone(
        &self,
        allowance: CallAllowance,
        now: std::time::Instant,
    ) -> Result<Reservation, Duration> {
        let replicas = self.replicas.load(Ordering::Relaxed).max(ASSUMED_REPLICAS);
        let mut alone = self.alone.lock();
        if alone
            .as_ref()
            .is_none_or(|(cut_for, _)| *cut_for != replicas)
        {
            // At least two: a refresh, and the login that follows it if it fails.
            let share = (allowance.per_minute / replicas).max(2);
            let burst = allowance.burst.min(2);
            *alone = Some((replicas, CallBudget::new(share, burst)));
        }
        let Some((_, budget)) = alone.as_mut() else {
            unreachable!("set above")
        };
        match budget.wait_at(now) {
            Some(wait) => Err(wait),
            None => Ok(budget.reserve(now)),
        }
    }

    /// Gives back a call taken from this replica's share that yielded a token.
    pub(super) fn refund_alone(&self, reservation: Reservation) {
        if let Some((_, budget)) = self.alone.lock().as_mut() {
            budget.refund(reservation);
        }
    }

    /// Notes that the fleet's budget for failed calls refused a call for `wait`.
    pub(super) fn budget_spent_for(&self, wait: Duration) {
        *self.budget_spent.lock() = Some(wait);
    }

    /// How long the fleet's budget refused a call for since this was last asked, if it did.
    pub(super) fn take_budget_spent(&self) -> Option<Duration> {
        self.budget_spent.lock().take()
    }

    /// Whether the coordinator did not answer the last call.
    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The highest shared generation this replica has seen in `epoch`: a shared set below it
    /// was restored from an older copy, and its refresh token may have been spent.
    pub(super) fn seen_in(&self, epoch: &str) -> u64 {
        self.seen.lock().get(epoch).map_or(0, |e| e.seen)
    }

    /// Whether this replica saw the set of `generation` in `epoch` marked "refreshing": a copy
    /// of the session restored from before the mark has lost it, not the risk.
    pub(super) fn saw_marked(&self, epoch: &str, generation: u64) -> bool {
        self.seen
            .lock()
            .get(epoch)
            .and_then(|e| e.marked)
            .is_some_and(|marked| generation <= marked)
    }

    /// Whether `shared`'s set is of a session this replica logged out of: its access token,
    /// or a set published before the last logout began (as the coordinator's clock tells its
    /// age), at `now`.
    pub(super) fn ended(&self, shared: &SharedTokens, now: std::time::Instant) -> bool {
        let ended = self.ended.lock();
        let (tokens, logged_out_at) = &*ended;
        let held = shared
            .tokens
            .as_ref()
            .is_some_and(|set| tokens.contains(&set.access_token));
        let before_logout = match (shared.obtained_ago, logged_out_at) {
            (Some(ago), Some(at)) => ago >= now.saturating_duration_since(*at),
            _ => false,
        };
        held || before_logout
    }

    /// Notes a shared generation seen.
    pub(super) fn saw(&self, epoch: &str, generation: u64) {
        let mut seen = self.seen.lock();
        let known = seen.entry(epoch);
        known.seen = known.seen.max(generation);
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("coordinator", &self.coordinator)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// How an acquisition through the fleet ends: a token, or `None` to renew on this replica's own.
type Acquisition = Result<Option<(Arc<CachedToken>, Source)>, AuthError>;

/// What a replica does when a coordinator call failed.
enum OnUnreachable {
    TryAgain,
    GoAlone,
}

/// How far one acquisition got with the coordinator.
struct Reach {
    started: Instant,
    /// When the current run of failed calls began.
    failing_since: Option<Instant>,
    /// Whether the coordinator was known to be out of reach when the acquisition began.
    down_at_start: bool,
    /// Whether any call of this acquisition succeeded.
    reached: bool,
}

impl Session {
    /// A token through the shared session, or `Ok(None)` when the coordinator cannot be used
    /// and this replica must renew on its own.
    ///
    /// Invariants: a replica waits for another's renewal at most the lease TTL plus the
    /// acquisition budget; it never presents a refresh token marked as possibly spent, nor one
    /// of a set older than a generation it has seen; it publishes only under the lease, from the
    /// generation it renewed; and it renews on its own only after the coordinator stayed out of
    /// reach for [`UNREACHABLE_GRACE`].
    pub(super) async fn acquire_shared(
        &self,
        fleet: &Fleet,
        reason: RenewReason,
        logout_epoch: u64,
    ) -> Acquisition {
        let local = self.current.load_full();
        let patience = fleet.coordinator.lease_ttl() + self.policy.acquire_timeout;
        let mut reach = Reach {
            started: Instant::now(),
            failing_since: None,
            down_at_start: fleet.down.load(Ordering::Relaxed),
            reached: false,
        };
        // One lease value for the whole acquisition, or the one an earlier call may have taken.
        let lease = fleet
            .uncertain_lease
            .lock()
            .take()
            .unwrap_or_else(Lease::unique);
        let mut lease_uncertain = false;
        let mut shared: Option<Option<SharedTokens>> = None;
        let outcome = loop {
            let now_shared = match shared.take() {
                Some(known) => known,
                None => match self
                    .reach(fleet, &mut reach, fleet.coordinator.read(&fleet.scope))
                    .await
                {
                    Some(read) => read,
                    None => match self.unreachable(&reach, reason, local.as_deref()).await {
                        Some(end) => break end,
                        None => continue,
                    },
                },
            };
            if fleet.owed_clear.load(Ordering::Relaxed) {
                // A logout's clear that did not land: made now, unless the session there was
                // published after the logout (another replica's new one, which stays). Its
                // age unknown, nothing shared is taken before the clear has landed.
                let outlived = now_shared
                    .as_ref()
                    .is_none_or(|s| s.obtained_ago.is_some() && !fleet.ended(s, self.clock.now()));
                if !outlived {
                    let cleared = self
                        .reach(fleet, &mut reach, fleet.coordinator.clear(&fleet.scope))
                        .await;
                    if cleared.is_none() {
                        match self.unreachable(&reach, reason, local.as_deref()).await {
                            Some(end) => break end,
                            None => continue,
                        }
                    }
                    info!("ended the shared IQM session a logout could not reach");
                }
                fleet.owed_clear.store(false, Ordering::Relaxed);
                if !outlived {
                    continue;
                }
            }
            if let Some(s) = &now_shared {
                fleet.read(s);
                self.learn_window(s.rate_limited_for);
                if s.foreign_key {
                    self.warn_foreign_key(fleet);
                    break Ok(None);
                }
            }
            if let Some(token) =
                self.adoptable(fleet, now_shared.as_ref(), local.as_deref(), reason)
            {
                break Ok(Some((token, Source::Shared)));
            }
            if let Some(retry_after) = now_shared.as_ref().and_then(|s| s.paused_for) {
                debug!(
                    ?retry_after,
                    "the fleet's renewals pause after a failed renewal"
                );
                break Err(AuthError::CallBudgetExhausted { retry_after });
            }
            let taken = self
                .reach(
                    fleet,
                    &mut reach,
                    fleet.coordinator.try_lease(&fleet.scope, &lease),
                )
                .await;
            match taken {
                Some(true) => {
                    lease_uncertain = false;
                    let renewed = self
                        .renew_under_lease(fleet, &lease, reason, local.as_ref(), logout_epoch)
                        .await;
                    self.coordinate(fleet, fleet.coordinator.release(&fleet.scope, &lease))
                        .await;
                    match renewed {
                        Ok(UnderLease::Acquired(acquired)) => break Ok(Some(acquired)),
                        Ok(UnderLease::LeaveAlone) => break Ok(None),
                        Ok(UnderLease::Unreachable) => {
                            // As any failed call: tried again (the lease, this replica's own,
                            // is recognised) while the grace lasts.
                            reach.failing_since.get_or_insert_with(Instant::now);
                            if let Some(end) =
                                self.unreachable(&reach, reason, local.as_deref()).await
                            {
                                break end;
                            }
                            continue;
                        }
                        Ok(UnderLease::LookAgain) => {}
                        Err(err) => break Err(err),
                    }
                }
                Some(false) => {}
                None => {
                    // The lease may have been taken without this replica hearing it.
                    lease_uncertain = true;
                    if let Some(end) = self.unreachable(&reach, reason, local.as_deref()).await {
                        break end;
                    }
                    shared = Some(now_shared);
                    continue;
                }
            }
            let waited = reach.started.elapsed();
            if waited >= patience {
                // The holder has not published in a lease TTL plus a renewal's budget (Redis
                // slow, its publish lost): a login of this replica's own (never a refresh of
                // the shared set) rather than a failed request.
                warn!(
                    ?patience,
                    "no other replica published a new IQM token set in time; renewing on this replica's own"
                );
                break Ok(None);
            }
            debug!("another replica renews the shared IQM session; waiting for its set");
            let seen = now_shared.as_ref().map_or(0, |s| s.generation);
            let (shortest, longest) = WAIT_SLICE;
            let slice = (fleet.coordinator.lease_ttl() / 4)
                .clamp(shortest, longest)
                .min(patience - waited);
            let newer = self
                .reach_within(
                    fleet,
                    &mut reach,
                    slice + COORDINATOR_CALL_LIMIT,
                    fleet.coordinator.wait_for_newer(&fleet.scope, seen, slice),
                )
                .await;
            match newer {
                Some(newer) => shared = Some(newer),
                None => {
                    if let Some(end) = self.unreachable(&reach, reason, local.as_deref()).await {
                        break end;
                    }
                    shared = Some(now_shared);
                }
            }
        };
        if lease_uncertain {
            // Asked for again by the next renewal, which recognises it if it was taken.
            *fleet.uncertain_lease.lock() = Some(lease);
        }
        outcome
    }

    /// After a failed coordinator call: `None` (after a short pause) to try again, or how the
    /// acquisition ends.
    async fn unreachable(
        &self,
        reach: &Reach,
        reason: RenewReason,
        local: Option<&CachedToken>,
    ) -> Option<Acquisition> {
        match self.on_unreachable(reach, reason, local) {
            Ok(OnUnreachable::TryAgain) => {
                tokio::time::sleep(UNREACHABLE_RETRY).await;
                None
            }
            Ok(OnUnreachable::GoAlone) => Some(Ok(None)),
            Err(err) => Some(Err(err)),
        }
    }

    /// What to do after a failed coordinator call: try again while the grace lasts; renew on
    /// this replica's own once it is over (or at once in a known outage); and for a proactive
    /// renewal whose token is still valid, stop here and keep serving it.
    fn on_unreachable(
        &self,
        reach: &Reach,
        reason: RenewReason,
        local: Option<&CachedToken>,
    ) -> Result<OnUnreachable, AuthError> {
        let valid = local.is_some_and(|token| {
            !token.was_refused()
                && token.deadlines.freshness(self.clock.now()) != Freshness::Expired
        });
        if reason == RenewReason::Proactive && valid {
            debug!("the shared IQM session is out of reach; keeping the valid token for now");
            return Err(AuthError::Interrupted);
        }
        if reach.down_at_start && !reach.reached {
            return Ok(OnUnreachable::GoAlone);
        }
        let failing_for = reach
            .failing_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        if failing_for >= UNREACHABLE_GRACE {
            return Ok(OnUnreachable::GoAlone);
        }
        Ok(OnUnreachable::TryAgain)
    }

    /// One coordinator call of an acquisition, noting whether the coordinator answered.
    async fn reach<T>(
        &self,
        fleet: &Fleet,
        reach: &mut Reach,
        call: impl Future<Output = Result<T, CoordinatorError>>,
    ) -> Option<T> {
        self.reach_within(fleet, reach, COORDINATOR_CALL_LIMIT, call)
            .await
    }

    /// [`reach`](Self::reach) for a call that may take up to `limit`.
    async fn reach_within<T>(
        &self,
        fleet: &Fleet,
        reach: &mut Reach,
        limit: Duration,
        call: impl Future<Output = Result<T, CoordinatorError>>,
    ) -> Option<T> {
        let answer = self.coordinate_within(fleet, limit, call).await;
        if answer.is_some() {
            reach.reached = true;
            reach.failing_since = None;
        } else if reach.failing_since.is_none() {
            reach.failing_since = Some(Instant::now());
        }
        answer
    }

    /// One coordinator call, bounded and isolated; `None` if it failed. A failure is counted,
    /// and logged once per outage.
    pub(super) async fn coordinate<T>(
        &self,
        fleet: &Fleet,
        call: impl Future<Output = Result<T, CoordinatorError>>,
    ) -> Option<T> {
        self.coordinate_within(fleet, COORDINATOR_CALL_LIMIT, call)
            .await
    }

    /// [`coordinate`](Self::coordinate) for a call that may take up to `limit`.
    async fn coordinate_within<T>(
        &self,
        fleet: &Fleet,
        limit: Duration,
        call: impl Future<Output = Result<T, CoordinatorError>>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await;
        let err = match outcome {
            Ok(Ok(Ok(value))) => {
                if fleet.down.swap(false, Ordering::Relaxed) {
                    info!("the shared IQM session is reachable again");
                }
                return Some(value);
            }
            Ok(Ok(Err(err))) => err,
            Ok(Err(_panic)) => {
                self.counters.user_code_panic();
                CoordinatorError("the coordinator panicked".to_owned())
            }
            Err(_) => CoordinatorError(format!("no answer within {limit:?}")),
        };
        self.counters.shared_error();
        if !fleet.down.swap(true, Ordering::Relaxed) {
            warn!(error = %err, "the shared IQM session is unavailable; waiting for it, then renewing on this replica's own (never refreshing a shared set) until it is back");
        }
        None
    }

    /// A set sealed under a key this replica does not hold: it renews for itself, and leaves the
    /// fleet's set alone.
    fn warn_foreign_key(&self, fleet: &Fleet) {
        self.counters.shared_unreadable();
        if !fleet.warned_foreign_key.swap(true, Ordering::Relaxed) {
            warn!(
                "the shared IQM session is sealed under an encryption key this replica does not hold; renewing on its own without touching it (give every replica the fleet's key)"
            );
        }
    }

    /// Removes the shared set, for a logout. If the clear does not land (Redis out of reach), no
    /// set published before the logout began (or holding the token it ended) is taken again or
    /// renewed from, and the next renewal that reaches Redis makes the clear, unless the set
    /// there was published after the logout.
    pub(super) async fn clear_shared(&self) {
        if let Some(fleet) = &self.fleet {
            {
                let mut ended = fleet.ended.lock();
                let (tokens, logged_out_at) = &mut *ended;
                *logged_out_at = Some(self.clock.now());
                if let Some(token) = self.current.load().as_deref() {
                    if tokens.len() == ENDED_KEPT {
                        tokens.remove(0);
                    }
                    tokens.push(token.access_token.clone());
                }
            }
            let cleared = self
                .coordinate(fleet, fleet.coordinator.clear(&fleet.scope))
                .await;
            fleet.owed_clear.store(cleared.is_none(), Ordering::Relaxed);
        }
    }
}
