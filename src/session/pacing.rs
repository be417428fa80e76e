//! Pacing between renewals: after a failed renewal, no new one starts before a pause has passed,
//! and callers get the failure at once instead of an auth call.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tracing::info;

use crate::error::{AuthEndpoint, AuthError, FailureClass};
use crate::token::far_future;

use super::Policy;

/// The pause after the second failed renewal in a row; it doubles with each further failure.
const FIRST_OUTAGE_PAUSE: Duration = Duration::from_secs(2);
/// The longest pause between renewals during an outage.
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Invariant: while `blocked` holds an instant still ahead, no renewal starts and callers get
/// its error. The first transient failure in a row pauses nothing (an outage that has passed is
/// retried at once); the next ones pause 2 s, 4 s, … up to [`MAX_OUTAGE_PAUSE`]. A 429 pauses
/// at least the rate-limit pause, and a `Retry-After` lengthens any pause to IQM's time.
/// Rejected credentials pause for the cool-down, doubled for each rejection in a row up to its
/// maximum. A success resets everything. Pauses saturate: no setting can overflow `now + pause`.
#[derive(Default)]
pub(super) struct Pacing {
    failures_in_a_row: u32,
    rejections_in_a_row: u32,
    blocked: Option<(Instant, AuthError)>,
}

impl Pacing {
    fn pause_after(&self, err: &AuthError, policy: &Policy) -> Duration {
        let outage = match self.failures_in_a_row {
            0 | 1 => Duration::ZERO,
            n => FIRST_OUTAGE_PAUSE
                .saturating_mul(1 << (n - 2).min(16))
                .min(MAX_OUTAGE_PAUSE),
        };
        let rate_limited = err.status() == Some(StatusCode::TOO_MANY_REQUESTS);
        let pause = if refuses_credentials(err) {
            let doublings = self.rejections_in_a_row.saturating_sub(1);
            policy
                .rejection_cool_down
                .saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
                .min(
                    policy
                        .max_rejection_cool_down
                        .max(policy.rejection_cool_down),
                )
        } else if rate_limited {
            outage.max(policy.rate_limit_pause)
        } else {
            outage
        };
        pause.max(err.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER))
    }

    /// Records how a renewal ended at `now`. Renewals that made no auth call of their own
    /// (interrupted, or refused by the budget for failed calls) change nothing.
    pub(super) fn record(&mut self, result: Result<(), &AuthError>, now: Instant, policy: &Policy) {
        let err = match result {
            Ok(()) => {
                *self = Self::default();
                return;
            }
            Err(err) => err,
        };
        if matches!(
            err.class(),
            FailureClass::Interrupted | FailureClass::Throttled
        ) {
            return;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if refuses_credentials(err) {
            self.rejections_in_a_row = self.rejections_in_a_row.saturating_add(1);
        }
        let pause = self.pause_after(err, policy);
        if pause.is_zero() {
            self.blocked = None;
            return;
        }
        info!(class = %err.class(), pause = ?pause, "pausing IQM token renewals");
        let until = now.checked_add(pause).unwrap_or_else(|| far_future(now));
        self.blocked = Some((until, err.clone()));
    }

    /// The error callers get at `now` instead of a renewal, while renewals are paused: the
    /// error that paused them, its `retry_after` (if it had one) counting down to the end of
    /// the pause.
    pub(super) fn blocked_at(&self, now: Instant) -> Option<AuthError> {
        match &self.blocked {
            Some((until, err)) if now < *until => {
                Some(err.clone().retry_after_at_most(*until - now))
            }
            _ => None,
        }
    }
}

/// Whether IQM refused the login itself: the credentials (or the account) are wrong, and will
/// stay wrong for a while. A 4xx other than 408 and 429, and equally a refusal inside a 2xx
/// (`"success": false`), which IQM sends on some paths.
fn refuses_credentials(err: &AuthError) -> bool {
    err.class() == FailureClass::Rejected && err.endpoint() == Some(AuthEndpoint::Login)
}

/// How long a whole fleet pauses its renewals after the lease holder's renewal failed with
/// `err`, the fleet's renewals having failed `failures_before` times in a row before: what one
/// replica's pacing pauses after the same failures in a row, counting from the second (2 s for
/// an outage, doubling to 30 s; the cool-down for refused credentials, doubling to its maximum;
/// IQM's `Retry-After`), so that a fleet in an outage spends the auth calls of one replica, not
/// those of every replica in turn. Nothing for a renewal that made no call of its own (cut off,
/// or refused by a budget for failed calls: another replica may still renew).
pub(super) fn fleet_pause(err: &AuthError, policy: &Policy, failures_before: u32) -> Duration {
    if matches!(
        err.class(),
        FailureClass::Interrupted | FailureClass::Throttled
    ) {
        return Duration::ZERO;
    }
    let in_a_row = Pacing {
        failures_in_a_row: failures_before.saturating_add(2),
        rejections_in_a_row: failures_before.saturating_add(1),
        blocked: None,
    };
    in_a_row.pause_after(err, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::policy;

    fn failure(endpoint: AuthEndpoint, status: u16, retry_after: Option<u64>) -> AuthError {
        AuthError::Rejected {
            endpoint,
            status: http::StatusCode::from_u16(status).unwrap(),
            messages: Vec::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn an_outage_pauses_renewals_longer_with_each_failure_in_a_row() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let err = failure(AuthEndpoint::Login, 503, None);
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pacing.record(Err(&err), t0, &policy());
            pauses.push(
                pacing
                    .blocked
                    .as_ref()
                    .map_or(0, |(until, _)| (*until - t0).as_secs()),
            );
        }
        assert_eq!(pauses, [0, 2, 4, 8, 16, 30, 30, 30]);
        pacing.record(Ok(()), t0, &policy());
        assert!(pacing.blocked_at(t0).is_none());
        assert_eq!(pacing.failures_in_a_row, 0);
    }

    #[test]
    fn rejected_credentials_cool_down_at_once() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.record(Err(&failure(AuthEndpoint::Login, 403, None)), t0, &policy());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(29)).is_some());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(30)).is_none());
    }

    #[test]
    fn the_cool_down_doubles_for_rejections_in_a_row_up_to_its_maximum() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let rejected = failure(AuthEndpoint::Login, 403, None);
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pacing.record(Err(&rejected), t0, &policy());
            pauses.push(
                pacing
                    .blocked
                    .as_ref()
                    .map_or(0, |(until, _)| (*until - t0).as_secs()),
            );
        }
        assert_eq!(pauses, [30, 60, 120, 240, 480, 900, 900, 900]);
        pacing.record(Ok(()), t0, &policy());
        pacing.record(Err(&rejected), t0, &policy());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(30)).is_none());
    }

    #[test]
    fn the_cool_down_stays_at_its_maximum_however_many_refusals_follow() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let rejected = failure(AuthEndpoint::Login, 403, None);
        for _ in 0..100 {
            pacing.record(Err(&rejected), t0, &policy());
        }
        assert!(pacing.blocked_at(t0 + Duration::from_secs(899)).is_some());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(900)).is_none());
    }

    #[test]
    fn a_refusal_inside_a_200_cools_down_like_a_4xx() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.record(Err(&failure(AuthEndpoint::Login, 200, None)), t0, &policy());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(29)).is_some());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(30)).is_none());
    }

    #[test]
    fn a_paused_error_counts_its_retry_after_down() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.record(
            Err(&failure(AuthEndpoint::Refresh, 429, Some(30))),
            t0,
            &policy(),
        );
        let later = pacing.blocked_at(t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(later.retry_after(), Some(Duration::from_secs(18)));
    }

    #[test]
    fn a_huge_cool_down_saturates_instead_of_overflowing() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let policy = Policy {
            rejection_cool_down: Duration::MAX,
            max_rejection_cool_down: Duration::MAX,
            ..policy()
        };
        for _ in 0..3 {
            pacing.record(Err(&failure(AuthEndpoint::Login, 401, None)), t0, &policy);
        }
        assert!(
            pacing
                .blocked_at(t0 + Duration::from_secs(100 * 86_400))
                .is_some()
        );
    }

    #[test]
    fn a_429_without_retry_after_pauses_for_the_rate_limit_pause() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.record(
            Err(&failure(AuthEndpoint::Refresh, 429, None)),
            t0,
            &policy(),
        );
        assert!(pacing.blocked_at(t0 + Duration::from_secs(9)).is_some());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(10)).is_none());
    }

    #[test]
    fn renewals_that_sent_no_call_change_no_pause() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        for err in [
            AuthError::Interrupted,
            AuthError::LoggedOut,
            AuthError::CallBudgetExhausted {
                retry_after: Duration::from_secs(6),
            },
        ] {
            pacing.record(Err(&err), t0, &policy());
        }
        assert_eq!(pacing.failures_in_a_row, 0);
        assert!(pacing.blocked_at(t0).is_none());
    }

    #[test]
    fn a_fleet_pauses_as_one_replica_does_after_a_second_failure() {
        let policy = policy();
        let pause = |err: &AuthError| fleet_pause(err, &policy, 0).as_secs();
        assert_eq!(pause(&failure(AuthEndpoint::Login, 503, None)), 2);
        assert_eq!(pause(&failure(AuthEndpoint::Login, 403, None)), 30);
        assert_eq!(pause(&failure(AuthEndpoint::Refresh, 429, None)), 10);
        assert_eq!(pause(&failure(AuthEndpoint::Login, 503, Some(40))), 40);
        assert_eq!(pause(&AuthError::Interrupted), 0);
        let refused_unsent = AuthError::CallBudgetExhausted {
            retry_after: Duration::from_secs(40),
        };
        assert_eq!(pause(&refused_unsent), 0);
    }

    #[test]
    fn the_fleet_pause_grows_with_the_fleet_failures_in_a_row() {
        let policy = policy();
        let outage = failure(AuthEndpoint::Login, 503, None);
        let pauses: Vec<u64> = (0..7)
            .map(|before| fleet_pause(&outage, &policy, before).as_secs())
            .collect();
        assert_eq!(pauses, [2, 4, 8, 16, 30, 30, 30]);
        let refused = failure(AuthEndpoint::Login, 403, None);
        assert_eq!(fleet_pause(&refused, &policy, 1).as_secs(), 60);
        assert_eq!(fleet_pause(&outage, &policy, u32::MAX).as_secs(), 30);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.record(
            Err(&failure(AuthEndpoint::Login, 429, Some(12))),
            t0,
            &policy(),
        );
        assert!(pacing.blocked_at(t0 + Duration::from_secs(11)).is_some());
        assert!(pacing.blocked_at(t0 + Duration::from_secs(12)).is_none());
        pacing.record(
            Err(&failure(AuthEndpoint::Login, 429, Some(u64::MAX / 2))),
            t0,
            &policy(),
        );
        assert!(pacing.blocked_at(t0 + MAX_RETRY_AFTER).is_none());
    }
}
