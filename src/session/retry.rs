//! Retries within one renewal: a transiently failing auth call is tried again after an
//! exponential backoff with jitter, or after IQM's `Retry-After` when it is short.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tracing::warn;

use crate::error::{AuthEndpoint, AuthError};
use crate::fleet::CallAllowance;
use crate::limit::Kind;
use crate::token::CachedToken;

use super::Session;
use super::budget::Reservation;
use super::fleet_state::Fleet;

/// The first backoff between tries of one auth call; it doubles with each try, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A `Retry-After` longer than this is not waited for inside one renewal: the renewal fails,
/// and the pacing keeps new ones from starting until IQM's time has passed.
pub(super) const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(5);

/// Where an auth call was taken from besides this replica's own budget.
enum FleetCall<'a> {
    /// No fleet.
    None,
    /// The fleet's shared budget, under this name.
    Taken(&'a Fleet, String),
    /// This replica's share of the fleet's budget, the coordinator being out of reach.
    Alone(&'a Fleet, Reservation),
}

impl Session {
    /// One auth call, taken from the budget for failed auth calls before it is sent and given
    /// back if it yields a token, so that a call that hangs or is cut off counts as failed.
    ///
    /// Invariant: no call is sent while the budget is spent; the caller then gets
    /// [`AuthError::CallBudgetExhausted`]. Nor while IQM's rate limit holds it back
    /// ([`AuthError::RateLimited`]), which takes nothing from the budget.
    pub(super) async fn budgeted<Fut>(
        &self,
        endpoint: AuthEndpoint,
        call: Fut,
    ) -> Result<Arc<CachedToken>, AuthError>
    where
        Fut: Future<Output = Result<Arc<CachedToken>, AuthError>>,
    {
        let spent = |retry_after: Duration| {
            warn!(%endpoint, ?retry_after, "the budget for failed IQM auth calls is spent");
            Err(AuthError::CallBudgetExhausted { retry_after })
        };
        if let Some(retry_after) = self.budget.lock().wait_at(self.clock.now()) {
            return spent(retry_after);
        }
        let fleet_call = match self.reserve_fleet_call().await {
            Ok(fleet_call) => fleet_call,
            Err(retry_after) => return spent(retry_after),
        };
        // This replica's own budget is charged as the call is sent (the fleet's may have taken
        // a while), so that its minute is the one IQM sees.
        let reservation = {
            let mut budget = self.budget.lock();
            let now = self.clock.now();
            match budget.wait_at(now) {
                Some(retry_after) => None.ok_or(retry_after),
                None => Ok(budget.reserve(now)),
            }
        };
        let reservation = match reservation {
            Ok(reservation) => reservation,
            Err(retry_after) => {
                self.give_back(fleet_call).await;
                return spent(retry_after);
            }
        };
        // IQM's rate limit last, so the call is sent at its turn; not sent, it takes nothing.
        if let Err(err) = self.admit(Kind::Auth).await {
            self.budget.lock().refund(reservation);
            self.give_back(fleet_call).await;
            return Err(err);
        }
        let result = call.await;
        if result.is_ok() {
            self.budget.lock().refund(reservation);
            self.give_back(fleet_call).await;
        }
        result
    }

    /// Gives a call back to the fleet's budget: it yielded a token, or was never sent.
    async fn give_back(&self, fleet_call: FleetCall<'_>) {
        match fleet_call {
            FleetCall::Taken(fleet, name) => {
                let allowance = self.call_allowance();
                self.coordinate(
                    fleet,
                    fleet
                        .coordinator
                        .refund_call(&fleet.scope, &name, allowance),
                )
                .await;
            }
            FleetCall::Alone(fleet, reservation) => fleet.refund_alone(reservation),
            FleetCall::None => {}
        }
    }

    /// Takes the call from the fleet's budget for failed calls when there is a fleet: from the
    /// shared one while the coordinator is in reach (every replica's calls count there, so the
    /// fleet spends what one process does), else from this replica's share of it (the budget
    /// split between the replicas last seen). `Err` with how long until a call may be sent
    /// when it is spent.
    async fn reserve_fleet_call(&self) -> Result<FleetCall<'_>, Duration> {
        let Some(fleet) = &self.fleet else {
            return Ok(FleetCall::None);
        };
        if !fleet.is_down() {
            let name = crate::fleet::unique_name();
            let reserved = self
                .coordinate(
                    fleet,
                    fleet
                        .coordinator
                        .reserve_call(&fleet.scope, &name, self.call_allowance()),
                )
                .await;
            match reserved {
                Some(None) => return Ok(FleetCall::Taken(fleet, name)),
                Some(Some(wait)) => {
                    fleet.budget_spent_for(wait);
                    return Err(wait);
                }
                None => {}
            }
        }
        fleet
            .reserve_alone(self.call_allowance(), self.clock.now())
            .map(|reservation| FleetCall::Alone(fleet, reservation))
    }

    fn call_allowance(&self) -> CallAllowance {
        let (per_minute, burst) = self.policy.auth_call_budget;
        CallAllowance::new(per_minute, burst)
    }

    /// Tries `call` up to `attempts` times while it fails transiently, each try
    /// [`budgeted`](Self::budgeted).
    ///
    /// Invariant: at most `attempts` calls per renewal, none while the budget is spent, and none
    /// after a non-transient failure, a 429 without `Retry-After` (the pacing pauses for it), or
    /// a `Retry-After` longer than [`MAX_RETRY_AFTER_WAIT`].
    pub(super) async fn with_retries<F, Fut>(
        &self,
        endpoint: AuthEndpoint,
        attempts: u32,
        mut call: F,
    ) -> Result<Arc<CachedToken>, AuthError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Arc<CachedToken>, AuthError>>,
    {
        let attempts = attempts.max(1);
        let mut attempt = 1;
        loop {
            let err = match self.budgeted(endpoint, call()).await {
                Ok(token) => return Ok(token),
                Err(err) => err,
            };
            if !err.is_transient() || attempt == attempts {
                return Err(err);
            }
            let wait = match err.retry_after() {
                Some(wait) if wait > MAX_RETRY_AFTER_WAIT => return Err(err),
                Some(wait) => wait,
                None if err.status() == Some(StatusCode::TOO_MANY_REQUESTS) => return Err(err),
                None => {
                    let unit = if self.policy.backoff_jitter {
                        self.random_unit()
                    } else {
                        0.5
                    };
                    backoff(attempt, unit)
                }
            };
            warn!(%endpoint, attempt, class = %err.class(), error = %err, backoff = ?wait, "IQM auth call failed; retrying");
            tokio::time::sleep(wait).await;
            // A budget spent meanwhile ends the retries with this error, which says more.
            if let Some(retry_after) = self.budget.lock().wait_at(self.clock.now()) {
                warn!(%endpoint, ?retry_after, "the budget for failed IQM auth calls is spent");
                return Err(err);
            }
            attempt += 1;
        }
    }
}

/// The wait after failed try number `attempt` (from 1): [`FIRST_BACKOFF`] doubled per try,
/// scaled by a factor in [0.5, 1.5) picked by `unit` in [0, 1), so that replicas retrying after
/// one outage spread out. `unit` 0.5 is the plain exponential backoff.
fn backoff(attempt: u32, unit: f64) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// The randomness of the jitter (backoff spread, and the fleet's renewal margin spread): a
/// SplitMix64 generator, seeded from the OS unless a seed is given, so that a run can be
/// reproduced exactly.
#[derive(Debug)]
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new(seed: Option<u64>) -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self(seed.unwrap_or_else(|| RandomState::new().hash_one(std::time::Instant::now())))
    }

    /// The next number in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Session {
    /// The next number of the session's jitter, in [0, 1).
    pub(super) fn random_unit(&self) -> f64 {
        self.jitter.lock().unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_doubles_per_try_and_jitter_spreads_it_by_half_either_way() {
        assert_eq!(backoff(1, 0.5), MS(200));
        assert_eq!(backoff(2, 0.5), MS(400));
        assert_eq!(backoff(3, 0.5), MS(800));
        assert_eq!(backoff(1, 0.0), MS(100));
        assert_eq!(backoff(2, 0.0), MS(200));
        assert_eq!(backoff(1, 0.999), MS(200).mul_f64(1.499));
        assert!(backoff(1, 0.999) < MS(300));
    }

    #[test]
    fn backoff_never_overflows() {
        assert_eq!(backoff(u32::MAX, 0.5), FIRST_BACKOFF * (1 << 16));
        assert_eq!(backoff(0, 0.5), FIRST_BACKOFF);
    }

    #[test]
    fn the_jitter_is_within_zero_and_one_and_a_seed_repeats_it() {
        let mut jitter = Jitter::new(None);
        for _ in 0..1000 {
            assert!((0.0..1.0).contains(&jitter.unit()));
        }
        let (mut a, mut b) = (Jitter::new(Some(7)), Jitter::new(Some(7)));
        let first: Vec<f64> = (0..10).map(|_| a.unit()).collect();
        assert_eq!(first, (0..10).map(|_| b.unit()).collect::<Vec<_>>());
        assert_ne!(first[0], Jitter::new(Some(8)).unit());
    }
}
