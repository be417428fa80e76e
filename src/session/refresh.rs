//! The refresh-token grant. IQM's refresh tokens rotate, and an OAuth server that sees a spent
//! refresh token again may take it for theft and revoke the whole token family: so a refresh
//! token is presented at most once unless IQM provably did not act on it, and a refresh that
//! fails gives way to a login in the same renewal.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tracing::{debug, info, warn};

use crate::error::{AuthEndpoint, AuthError, FailureClass};
use crate::secret::Secret;
use crate::stats::RenewReason;
use crate::token::CachedToken;

use super::Session;

/// How many spent refresh tokens are remembered: more than a session ever has in play.
const REMEMBERED_SPENT: usize = 8;

/// How long the refresh grant rests after it failed or was refused: renewals log in meanwhile,
/// so a broken refresh endpoint (or one that refuses this client) costs one failed call per
/// rest, not one per renewal.
const REFRESH_REST: Duration = Duration::from_secs(30);

/// What the session knows of its refresh tokens and of the refresh endpoint.
///
/// Invariant: a refresh token is marked spent before it is sent, and unmarked only when IQM
/// provably did not act on it (no connection, a transient non-2xx answer) or handed it back
/// unrotated. A call cut off half-way (a timeout, a cancelled renewal) leaves it spent, so it is
/// never presented again; nor is one IQM refused.
#[derive(Debug, Default)]
pub(super) struct RefreshState {
    /// Refresh tokens that may be spent, newest last.
    spent: VecDeque<Secret>,
    /// Until when the refresh grant is skipped.
    rest_until: Option<Instant>,
}

impl RefreshState {
    /// Whether `token` may have been spent: it must not be presented.
    pub(super) fn is_spent(&self, token: &Secret) -> bool {
        self.spent.contains(token)
    }

    fn mark_spent(&mut self, token: &Secret) {
        if !self.is_spent(token) {
            if self.spent.len() == REMEMBERED_SPENT {
                self.spent.pop_front();
            }
            self.spent.push_back(token.clone());
        }
    }

    fn unmark(&mut self, token: &Secret) {
        self.spent.retain(|spent| spent != token);
    }
}

impl Session {
    /// The refresh grant for `previous`, if it has a refresh token that may be presented and
    /// the grant is not resting. `Ok(None)`: log in instead.
    ///
    /// One try: a refresh that fails or is refused gives way to a login at once (and the grant
    /// rests for [`REFRESH_REST`]), so a broken refresh endpoint never keeps the service down
    /// while IQM's login works, and never spends the failed-call budget the login needs (it is
    /// skipped when the budget could not pay for both). A 429 is the exception: a login would
    /// go into the same rate limit, so the error is returned and the pacing waits out IQM's
    /// `Retry-After`. The refresh token leaves the store before it is presented.
    pub(super) async fn refresh(
        &self,
        reason: RenewReason,
        previous: Option<&CachedToken>,
        logout_epoch: u64,
    ) -> Result<Option<Arc<CachedToken>>, AuthError> {
        let Some(previous) = previous else {
            return Ok(None);
        };
        let Some(refresh_token) = &previous.refresh_token else {
            return Ok(None);
        };
        let issued = self.clock.now();
        {
            let state = self.store_shared.refresh.lock();
            if state.is_spent(refresh_token) {
                debug!(%reason, "the refresh token may have been spent; logging in");
                return Ok(None);
            }
            if state.rest_until.is_some_and(|until| issued < until) {
                debug!(%reason, "the refresh grant rests after a failure; logging in");
                return Ok(None);
            }
        }
        if !self.budget.lock().allows_two_at(issued) {
            debug!(%reason, "the failed-call budget could not pay for a login after a failed refresh; logging in");
            return Ok(None);
        }
        match self.unstore_refresh_token(previous, logout_epoch).await {
            Ok(()) => {}
            Err(AuthError::LoggedOut) => return Err(AuthError::LoggedOut),
            Err(_) => return Ok(None),
        }
        let refreshed = self
            .budgeted(AuthEndpoint::Refresh, async {
                self.store_shared.refresh.lock().mark_spent(refresh_token);
                self.counters.refresh();
                let set = self
                    .call_iqm(AuthEndpoint::Refresh, self.api.refresh(refresh_token))
                    .await?;
                self.cached_from_answer(set, issued, Some(previous))
            })
            .await;
        let mut state = self.store_shared.refresh.lock();
        match refreshed {
            Ok(token) => {
                if token.refresh_token.as_ref() == Some(refresh_token) {
                    state.unmark(refresh_token);
                }
                state.rest_until = None;
                info!(%reason, "refreshed the IQM token");
                Ok(Some(token))
            }
            // Not sent (the budget is spent, or IQM's rate limit holds it back), or refused by
            // IQM's rate limit, which a login would meet too: the token is still good, and the
            // error goes to the callers.
            Err(err)
                if matches!(
                    err,
                    AuthError::CallBudgetExhausted { .. } | AuthError::RateLimited { .. }
                ) || err.status() == Some(StatusCode::TOO_MANY_REQUESTS) =>
            {
                state.unmark(refresh_token);
                Err(err)
            }
            Err(err) => {
                // Refused, down, slow, or answering what cannot be read: the grant rests, so
                // that renewals meanwhile cost a login, not a failed refresh and a login.
                if err.is_transient() && err.iqm_did_not_act() {
                    state.unmark(refresh_token);
                }
                state.rest_until = issued.checked_add(REFRESH_REST);
                if err.class() == FailureClass::Rejected {
                    warn!(class = %err.class(), error = %err, "IQM refused the token refresh; logging in");
                } else {
                    warn!(class = %err.class(), error = %err, spent = state.is_spent(refresh_token), "the IQM token refresh failed; logging in");
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_token_stays_spent_until_unmarked_and_old_ones_are_forgotten() {
        let mut state = RefreshState::default();
        let first = Secret::new("r-0");
        state.mark_spent(&first);
        state.mark_spent(&first);
        assert!(state.is_spent(&first));
        assert_eq!(state.spent.len(), 1);
        for n in 1..=REMEMBERED_SPENT {
            state.mark_spent(&Secret::new(format!("r-{n}")));
        }
        assert!(!state.is_spent(&first), "the oldest is forgotten");
        let newest = Secret::new(format!("r-{REMEMBERED_SPENT}"));
        assert!(state.is_spent(&newest));
        state.unmark(&newest);
        assert!(!state.is_spent(&newest));
    }
}
