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
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::AuthError;
use crate::fleet::{CoordinatorError, Lease, SharedTokens};
use crate::stats::RenewReason;
use crate::token::{CachedToken, Freshness};

use super::Session;
use super::acquire::Source;
use super::fleet_state::{ENDED_KEPT, Fleet};
use super::lease::UnderLease;

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

/// The pause between tries of a coordinator that did not answer.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(100);

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
