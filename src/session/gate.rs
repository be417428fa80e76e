//! The gate every IQM request passes before it is sent, API requests and the layer's own auth
//! calls alike: IQM's 429 window, then its turn in the request rate (see [`crate::limit`]).
//! With a shared session both are the fleet's: the window is kept in the coordinator, and the
//! turns are taken in one fleet-wide line there.
//!
//! Invariants: nothing is sent while a window this replica knows of is closed; a request that
//! may not wait as long as the window or its turn is refused at once, unsent; with a request
//! rate, a request is sent at its turn (the caller sends at once after the gate) and a dropped
//! request gives its turn up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::error::{AuthError, RateLimitCause};
use crate::fleet::{Pace, SessionCoordinator, Turn, unique_name};
use crate::limit::{Kind, Rate};

use super::Session;
use super::fleet::UNREACHABLE_GRACE;
use super::fleet_state::{ASSUMED_REPLICAS, Fleet};
use super::pacing::MAX_RETRY_AFTER;
use super::retry::MAX_RETRY_AFTER_WAIT;

/// What a turn in the fleet's line came to.
enum FleetTurn {
    /// Taken (or refused) in the fleet's line.
    Taken(Result<Duration, Duration>),
    /// The coordinator keeps no fleet-wide pace: this replica paces alone at the full rate.
    Unsupported,
    /// The coordinator is out of reach: this replica paces alone at its share.
    Unreachable,
}

impl Session {
    /// Whether requests must pass the gate now: with a request rate always; without one only
    /// while a 429's window may be closed. The hot path's one check: no lock, no clock.
    pub(crate) fn gated(&self) -> bool {
        self.limits.rate.is_some() || self.limits.window.maybe_closed()
    }

    /// Waits until a request of `kind` may be sent: IQM's window open, then its turn. Fails at
    /// once with [`AuthError::RateLimited`], unsent, when it may not wait that long: an API
    /// request [`rate_limit_wait`](crate::IqmAuthBuilder::rate_limit_wait); an auth call 5 s for
    /// a window, as a renewal waits out a short `Retry-After` (a renewal is tried again once a
    /// longer one opens), and always for its turn, which comes first.
    pub(crate) async fn admit(&self, kind: Kind) -> Result<(), AuthError> {
        let limits = &self.limits;
        let refuse = |cause: RateLimitCause, retry_after: Duration| {
            self.counters.refused();
            debug!(?kind, %cause, ?retry_after, "an IQM request was not sent: IQM's rate limit");
            Err(AuthError::RateLimited { retry_after, cause })
        };
        // The clock is read only when there may be something to wait for.
        let start = (limits.window.maybe_closed()).then(|| self.clock.now());
        let mut waiting = None;
        while let Some(start) = start {
            let now = self.clock.now();
            let Some(left) = limits.window.closed_for(now) else {
                break;
            };
            let waited = now.saturating_duration_since(start);
            let may_wait = match kind {
                Kind::Auth => MAX_RETRY_AFTER_WAIT,
                Kind::Api => limits.wait,
            };
            if waited + left > may_wait {
                return refuse(RateLimitCause::Window, left);
            }
            debug!(?kind, wait = ?left, "waiting for IQM's 429 window to open");
            waiting.get_or_insert_with(|| self.counters.waiting());
            self.clock.sleep_until(now + left).await;
        }
        let mut waited = match (waiting.take(), start) {
            (Some(_), Some(start)) => self.clock.now().saturating_duration_since(start),
            _ => Duration::ZERO,
        };
        if let Some(rate) = limits.rate {
            let max_wait = limits.wait.saturating_sub(waited);
            match self.take_turn(rate, kind, max_wait).await {
                Ok(in_line) => waited += in_line,
                Err(retry_after) => return refuse(RateLimitCause::Pacing, retry_after),
            }
        }
        if !waited.is_zero() {
            self.counters.paced(waited);
            debug!(?kind, ?waited, "an IQM request waited for IQM's rate limit");
        }
        Ok(())
    }

    /// The request's turn: in the fleet's line when there is one, else in this process's. `Ok`
    /// with how long it waited in line (zero: its turn was now).
    async fn take_turn(
        &self,
        rate: Rate,
        kind: Kind,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let limits = &self.limits;
        let pacer = match &self.fleet {
            None => None,
            Some(fleet) => match self.fleet_turn(fleet, rate, kind, max_wait).await {
                FleetTurn::Taken(taken) => return taken,
                FleetTurn::Unsupported => None,
                FleetTurn::Unreachable => {
                    let replicas = fleet.replicas.load(Ordering::Relaxed).max(ASSUMED_REPLICAS);
                    let share = rate.share(replicas);
                    if !limits.warned_alone.swap(true, Ordering::Relaxed) {
                        warn!(
                            calls = share.calls,
                            period = ?share.period,
                            replicas,
                            "the shared IQM session is out of reach: pacing this replica's requests alone, at its share of the request rate"
                        );
                    }
                    Some(limits.alone(rate, replicas, &self.clock))
                }
            },
        };
        let pacer = match (&pacer, &limits.own) {
            (Some(alone), _) => alone,
            (None, Some(own)) => own,
            (None, None) => return Ok(Duration::ZERO),
        };
        pacer
            .take_turn(kind, &limits.window, max_wait, &self.counters)
            .await
    }

    /// A turn in the fleet's line: one call to take it, and one to confirm it when it comes if
    /// it was not now. A coordinator known to be out of reach is tried again by one request
    /// every [`UNREACHABLE_GRACE`]; the others pace alone meanwhile.
    async fn fleet_turn(
        &self,
        fleet: &Fleet,
        rate: Rate,
        kind: Kind,
        max_wait: Duration,
    ) -> FleetTurn {
        if fleet.is_down() {
            let now = self.clock.now();
            let mut last = self.limits.last_probe.lock();
            if last.is_some_and(|at| now.saturating_duration_since(at) < UNREACHABLE_GRACE) {
                return FleetTurn::Unreachable;
            }
            *last = Some(now);
        }
        let start = self.clock.now();
        let name = unique_name();
        let mut pace = Pace::new(rate.interval(), max_wait, kind == Kind::Auth);
        let call = fleet.coordinator.take_turn(&fleet.scope, &name, &pace);
        let mut wait = match self.coordinate(fleet, call).await {
            None => return FleetTurn::Unreachable,
            Some(None) => return FleetTurn::Unsupported,
            Some(Some(Turn::Now)) => return self.paced_with_fleet(Ok(Duration::ZERO)),
            Some(Some(Turn::Refused(retry_after))) => return FleetTurn::Taken(Err(retry_after)),
            Some(Some(Turn::In(wait))) => wait,
        };
        let _waiting = self.counters.waiting();
        let mut held = HeldTurn {
            coordinator: Some(Arc::clone(&fleet.coordinator)),
            scope: fleet.scope.clone(),
            name,
            pace,
        };
        loop {
            self.clock.sleep_until(self.clock.now() + wait).await;
            let waited = self.clock.now().saturating_duration_since(start);
            pace.max_wait = max_wait.saturating_sub(waited);
            held.pace = pace;
            let confirm = fleet
                .coordinator
                .confirm_turn(&fleet.scope, &held.name, &pace);
            match self.coordinate(fleet, confirm).await {
                Some(Turn::In(more)) => wait = more,
                Some(Turn::Refused(retry_after)) => {
                    held.coordinator = None;
                    return FleetTurn::Taken(Err(retry_after));
                }
                // Out of reach now: the turn was the fleet's, so it is used.
                Some(Turn::Now) | None => {
                    held.coordinator = None;
                    return self.paced_with_fleet(Ok(waited));
                }
            }
        }
    }

    fn paced_with_fleet(&self, taken: Result<Duration, Duration>) -> FleetTurn {
        if self.limits.warned_alone.swap(false, Ordering::Relaxed) {
            info!("pacing IQM requests with the fleet again");
        }
        FleetTurn::Taken(taken)
    }

    /// IQM answered a request (`retry_after`: its `Retry-After`) 429: the window closes for
    /// that long, or for the rate-limit pause without one, at most 5 minutes. Returns how long
    /// it is closed, to share with the fleet, if this 429 closed it longer.
    pub(crate) fn rate_limited(&self, retry_after: Option<Duration>) -> Option<Duration> {
        self.counters.rate_limited();
        let pause = retry_after
            .unwrap_or(self.policy.rate_limit_pause)
            .min(MAX_RETRY_AFTER);
        let now = self.clock.now();
        let until = now.checked_add(pause)?;
        if !self.limits.window.close_until(until) {
            return None;
        }
        info!(
            ?pause,
            "IQM answered 429: no request to IQM before its window opens"
        );
        self.fleet.is_some().then_some(pause)
    }

    /// Shares a window this replica closed with the fleet, and takes the fleet's if it is
    /// closed longer.
    pub(crate) async fn share_window(&self, closed_for: Duration) {
        if let Some(fleet) = &self.fleet {
            let call = fleet.coordinator.close_window(&fleet.scope, closed_for);
            if let Some(fleets) = self.coordinate(fleet, call).await {
                self.learn_window(Some(fleets));
            }
        }
    }

    /// A window the shared session told of: closed for `closed_for` from now.
    pub(super) fn learn_window(&self, closed_for: Option<Duration>) {
        let Some(closed_for) = closed_for.filter(|left| !left.is_zero()) else {
            return;
        };
        let closed_for = closed_for.min(MAX_RETRY_AFTER);
        if let Some(until) = self.clock.now().checked_add(closed_for) {
            if self.limits.window.close_until(until) {
                info!(wait = ?closed_for, "another replica met IQM's 429: no request to IQM before its window opens");
            }
        }
    }

    /// How long IQM's window stays closed, for `stats()`.
    pub(crate) fn rate_limited_for(&self) -> Option<Duration> {
        self.limits.window.closed_for(self.clock.now())
    }
}

/// A turn taken in the fleet's line and not yet used: given up if its request is dropped.
struct HeldTurn {
    coordinator: Option<Arc<dyn SessionCoordinator>>,
    scope: String,
    name: String,
    pace: Pace,
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        let Some(coordinator) = self.coordinator.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (scope, name, pace) = (
            std::mem::take(&mut self.scope),
            std::mem::take(&mut self.name),
            self.pace,
        );
        runtime.spawn(async move {
            let cancel = coordinator.cancel_turn(&scope, &name, &pace);
            if tokio::time::timeout(super::fleet::COORDINATOR_CALL_LIMIT, cancel)
                .await
                .is_err()
            {
                debug!(
                    "a dropped request's turn was not given back: the shared session did not answer"
                );
            }
        });
    }
}
