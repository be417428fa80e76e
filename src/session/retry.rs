//! Retries within one renewal: a transiently failing auth call is tried again after an
//! exponential backoff with jitter, or after IQM's `Retry-After` when it is short.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tracing::warn;

use crate::error::{AuthEndpoint, AuthError};
use crate::token::CachedToken;

use super::Session;

/// The first backoff between tries of one auth call; it doubles with each try, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A `Retry-After` longer than this is not waited for inside one renewal: the renewal fails,
/// and the pacing keeps new ones from starting until IQM's time has passed.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(5);

impl Session {
    /// One auth call, taken from the budget for failed auth calls before it is sent and given
    /// back if it yields a token, so that a call that hangs or is cut off counts as failed.
    ///
    /// Invariant: no call is sent while the budget is spent; the caller then gets
    /// [`AuthError::CallBudgetExhausted`].
    pub(super) async fn budgeted<Fut>(
        &self,
        endpoint: AuthEndpoint,
        call: Fut,
    ) -> Result<Arc<CachedToken>, AuthError>
    where
        Fut: Future<Output = Result<Arc<CachedToken>, AuthError>>,
    {
        let reservation = {
            let mut budget = self.budget.lock();
            let now = self.clock.now();
            if let Some(retry_after) = budget.wait_at(now) {
                warn!(%endpoint, ?retry_after, "the budget for failed IQM auth calls is spent");
                return Err(AuthError::CallBudgetExhausted { retry_after });
            }
            budget.reserve(now)
        };
        let result = call.await;
        if result.is_ok() {
            self.budget.lock().refund(reservation);
        }
        result
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
                        random_unit()
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

/// A number in [0, 1) that differs between calls, without a dependency for it.
pub(super) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::Instant::now());
    (random % 1_000) as f64 / 1_000.0
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
    fn the_random_unit_is_within_zero_and_one() {
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&random_unit()));
        }
    }
}
