//! What one replica keeps of the fleet: its coordinator and scope, whether the coordinator
//! answers, the generations it has seen, the sessions it logged out of, and its share of the
//! failed-call budget while the coordinator is out of reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::fleet::{CallAllowance, Lease, SessionCoordinator, SharedTokens};
use crate::secret::Secret;

use super::budget::{CallBudget, Reservation};
use super::seen::Seen;

/// The fewest replicas a replica out of reach of the coordinator assumes it shares the budget
/// for failed calls with: replicas that start together see each other only as they read, and
/// one that never reached Redis has seen none.
pub(super) const ASSUMED_REPLICAS: u32 = 4;

/// How many logged-out access tokens a replica remembers.
pub(super) const ENDED_KEPT: usize = 4;

/// The fleet's coordinator, as one session uses it.
pub(crate) struct Fleet {
    pub(super) coordinator: Arc<dyn SessionCoordinator>,
    pub(super) scope: String,
    /// Whether the last call failed: an outage is logged once, not once per renewal, and a
    /// renewal that starts in a known outage does not wait for the coordinator.
    pub(super) down: AtomicBool,
    /// What this replica has seen of the shared session, per epoch.
    pub(super) seen: Mutex<Seen>,
    /// The access tokens of the last sessions this replica logged out of, and when its last
    /// logout began.
    pub(super) ended: Mutex<(Vec<Secret>, Option<std::time::Instant>)>,
    /// Whether a logout's clear did not land: it is made before the next renewal reads.
    pub(super) owed_clear: AtomicBool,
    /// How long the fleet's budget for failed calls last refused a call for.
    pub(super) budget_spent: Mutex<Option<Duration>>,
    /// The most replicas the shared session said read it in the last hour (0: not known).
    pub(super) replicas: AtomicU32,
    /// This replica's share of the fleet's budget for failed calls while the coordinator is
    /// out of reach, and the number of replicas it was cut for.
    pub(super) alone: Mutex<Option<(u32, CallBudget)>>,
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
