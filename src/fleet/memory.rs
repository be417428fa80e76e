//! [`MemoryCoordinator`]: the shared session's protocol in one process, for tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::line::Line;
use super::{
    CallAllowance, CoordinatorError, DEFAULT_LEASE_TTL, Failure, Lease, Pace, Publication,
    SessionCoordinator, SharedTokens, Turn,
};
use crate::session::{CallBudget, Reservation};
use crate::status::LeaseState;
use crate::store::StoredTokens;

/// A [`SessionCoordinator`] in memory: layers in one process that share it share one session.
/// For tests of code that runs with a shared session; across processes use
/// [`RedisSession`](crate::RedisSession). Its leases and expiries run on the real monotonic
/// clock (`std::time::Instant`), not on tokio's: under paused time leases never run out.
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
    epoch: String,
    generation: u64,
    /// The set, its access token's expiry, and when it was obtained from IQM.
    tokens: Option<(StoredTokens, Instant, Instant)>,
    refreshing: bool,
    paused_until: Option<Instant>,
    failures_in_a_row: u32,
    calls: Ledger,
    lease: Option<(String, Instant)>,
    /// When IQM's rate-limit window opens, if a replica closed it.
    window: Option<Instant>,
    /// The fleet's line of turns, with a request rate.
    line: Line,
}

/// The fleet's budget for failed auth calls: the session's own [`CallBudget`] (cut for the
/// allowance it was first asked with, anew if that changes), and the reservation of each call
/// by name, to give back.
#[derive(Debug, Default)]
struct Ledger {
    budget: Option<(CallAllowance, CallBudget)>,
    taken: HashMap<String, Reservation>,
}

impl Ledger {
    fn budget(&mut self, allowance: CallAllowance) -> &mut CallBudget {
        if self
            .budget
            .as_ref()
            .is_none_or(|(cut_for, _)| *cut_for != allowance)
        {
            self.taken.clear();
            self.budget = None;
        }
        let (_, budget) = self.budget.get_or_insert_with(|| {
            (
                allowance,
                CallBudget::new(allowance.per_minute, allowance.burst),
            )
        });
        budget
    }

    fn reserve(&mut self, call: &str, allowance: CallAllowance, now: Instant) -> Option<Duration> {
        if self.taken.contains_key(call) {
            return None;
        }
        let budget = self.budget(allowance);
        if let Some(wait) = budget.wait_at(now) {
            return Some(wait);
        }
        let reservation = budget.reserve(now);
        self.taken.insert(call.to_owned(), reservation);
        None
    }

    fn refund(&mut self, call: &str, allowance: CallAllowance) {
        if let Some(reservation) = self.taken.remove(call) {
            self.budget(allowance).refund(reservation);
        }
    }
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

impl MemoryCoordinator {
    /// A coordinator whose leases last `lease_ttl`.
    pub fn new(lease_ttl: Duration) -> Self {
        Self {
            scopes: Arc::default(),
            lease_ttl,
        }
    }
}

/// The state of `scope`, made (in a new epoch) if there is none.
fn scope_state<'a>(
    scopes: &'a mut HashMap<String, MemoryScope>,
    scope: &str,
) -> &'a mut MemoryScope {
    static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    scopes
        .entry(scope.to_owned())
        .or_insert_with(|| MemoryScope {
            epoch: format!(
                "memory:{}",
                EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            ..MemoryScope::default()
        })
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
            let left = |until: Instant| until.saturating_duration_since(now);
            let mut shared = SharedTokens::new(
                s.generation,
                s.tokens.as_ref().map(|(tokens, _, _)| tokens.clone()),
                s.refreshing,
            )
            .in_epoch(s.epoch.as_str())
            .paused(s.paused_until.map_or(Duration::ZERO, left))
            .with_failures(s.failures_in_a_row);
            if let Some((_, expires_at, obtained_at)) = &s.tokens {
                shared = shared
                    .expiring_in(left(*expires_at))
                    .obtained(now.saturating_duration_since(*obtained_at));
            }
            shared.rate_limited(s.window.map_or(Duration::ZERO, left))
        }))
    }

    async fn try_lease(&self, scope: &str, lease: &Lease) -> Result<bool, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        let now = Instant::now();
        let taken_by_another = state
            .lease
            .as_ref()
            .is_some_and(|(fence, until)| now < *until && *fence != lease.fence);
        if taken_by_another {
            return Ok(false);
        }
        state.lease = Some((lease.fence.clone(), now + self.lease_ttl));
        Ok(true)
    }

    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
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
        publication: &Publication,
    ) -> Result<Option<u64>, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        if !state.holds(lease) || state.generation != publication.expected {
            return Ok(None);
        }
        state.generation = state.generation.max(publication.floor) + 1;
        let now = Instant::now();
        let expires_at = now + publication.expires_in;
        let obtained_at = now.checked_sub(publication.obtained_ago).unwrap_or(now);
        state.tokens = Some((publication.tokens.clone(), expires_at, obtained_at));
        state.refreshing = false;
        state.paused_until = None;
        state.failures_in_a_row = 0;
        Ok(Some(state.generation))
    }

    async fn record_failure(
        &self,
        scope: &str,
        lease: &Lease,
        failure: &Failure,
    ) -> Result<(), CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        if !state.holds(lease) {
            return Ok(());
        }
        let now = Instant::now();
        state.paused_until = now.checked_add(failure.pause);
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        Ok(())
    }

    async fn reserve_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        Ok(state.calls.reserve(call, allowance, Instant::now()))
    }

    async fn refund_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        let mut scopes = self.scopes.lock();
        if let Some(state) = scopes.get_mut(scope) {
            state.calls.refund(call, allowance);
        }
        Ok(())
    }

    async fn close_window(
        &self,
        scope: &str,
        for_: Duration,
    ) -> Result<Duration, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        let now = Instant::now();
        let until = now.checked_add(for_).unwrap_or(now);
        let until = state.window.filter(|end| *end > until).unwrap_or(until);
        state.window = Some(until);
        Ok(until.saturating_duration_since(now))
    }

    async fn take_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Option<Turn>, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        let now = Instant::now();
        let from = state.window.filter(|end| *end > now).unwrap_or(now);
        Ok(Some(state.line.book(call, pace, from, now)))
    }

    async fn confirm_turn(
        &self,
        scope: &str,
        call: &str,
        pace: &Pace,
    ) -> Result<Turn, CoordinatorError> {
        let mut scopes = self.scopes.lock();
        let state = scope_state(&mut scopes, scope);
        Ok(state.line.confirm(call, pace, state.window, Instant::now()))
    }

    async fn cancel_turn(&self, scope: &str, call: &str, _: &Pace) -> Result<(), CoordinatorError> {
        if let Some(state) = self.scopes.lock().get_mut(scope) {
            state.line.cancel(call);
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
        let state = scope_state(&mut scopes, scope);
        state.generation += 1;
        state.tokens = None;
        state.refreshing = false;
        state.paused_until = None;
        state.failures_in_a_row = 0;
        Ok(())
    }

    async fn lease_state(&self, scope: &str) -> Result<LeaseState, CoordinatorError> {
        let scopes = self.scopes.lock();
        let now = Instant::now();
        Ok(
            match scopes.get(scope).and_then(|state| state.lease.as_ref()) {
                Some((_, until)) if now < *until => LeaseState::Held {
                    expires_in: *until - now,
                },
                _ => LeaseState::Free,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_budget_takes_a_burst_gives_back_by_name_and_counts_a_retry_once() {
        let allowance = CallAllowance::new(10, 3);
        let now = Instant::now();
        let mut ledger = Ledger::default();
        for call in ["a", "b", "c"] {
            assert_eq!(ledger.reserve(call, allowance, now), None);
        }
        assert_eq!(ledger.reserve("c", allowance, now), None, "a retry of c");
        assert!(
            ledger.reserve("d", allowance, now).is_some(),
            "burst of 3 spent"
        );
        ledger.refund("b", allowance);
        assert_eq!(ledger.reserve("d", allowance, now), None);
        assert!(ledger.reserve("e", allowance, now).is_some());
    }
}
