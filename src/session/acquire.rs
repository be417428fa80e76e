//! Acquisition: how one renewal obtains a token. A newer set from the token store when another
//! layer saved one, else the refresh-token grant when a refresh token may be presented, else a
//! password login; and the cached form of an answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

use crate::error::{AuthEndpoint, AuthError};
use crate::secret::Secret;
use crate::stats::RenewReason;
use crate::token::{CachedToken, Deadlines, Freshness, TokenSet};

use super::Session;

/// A token is trusted to stay fresh without clock reads only if its renewal deadline is at least
/// this far away when it is stored, so that a late timer cannot let an expired token be used.
const MIN_TIMER_LEAD: Duration = Duration::from_secs(1);

/// Where an acquired token came from: only new sets from IQM are saved to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Iqm,
    Store,
    /// The fleet's shared session, renewed by another replica.
    Shared,
}

/// A token a renewal obtained, and this layer's turn at the token store, held until the token
/// is saved (see [`stored`](super::stored)).
pub(super) struct Acquired {
    pub(super) token: Arc<CachedToken>,
    pub(super) source: Source,
    pub(super) store_turn: Option<OwnedMutexGuard<()>>,
}

impl Session {
    /// The one place where a renewal obtains a token: through the fleet's shared session when
    /// one is configured and reachable, else on this replica's own, within the acquisition
    /// budget.
    pub(super) async fn acquire(
        &self,
        reason: RenewReason,
        logout_epoch: u64,
    ) -> Result<Acquired, AuthError> {
        if let Some(fleet) = &self.fleet {
            if let Some((token, source)) = self.acquire_shared(fleet, reason, logout_epoch).await? {
                return Ok(Acquired {
                    token,
                    source,
                    store_turn: None,
                });
            }
            self.counters.renewed_alone();
        }
        let budget = self.policy.acquire_timeout;
        tokio::time::timeout(budget, self.acquire_on_own(reason, logout_epoch))
            .await
            .unwrap_or(Err(AuthError::BudgetExhausted(budget)))
    }

    /// Acquisition by this replica alone, in its turn at the token store: a newer set the store
    /// holds if it serves, else IQM (renewing from that set if its refresh token may be
    /// presented).
    async fn acquire_on_own(
        &self,
        reason: RenewReason,
        logout_epoch: u64,
    ) -> Result<Acquired, AuthError> {
        let store_turn = Some(Arc::clone(&self.store_shared.turn).lock_owned().await);
        self.fenced(logout_epoch)?;
        let current = self.current.load_full();
        let mut base = current.clone();
        if let Some(stored) = self.newer_stored(current.as_deref()).await {
            if serves(&stored, reason, self.clock.now()) {
                if current.is_some() {
                    info!(%reason, "took the newer IQM token set saved to the token store");
                } else {
                    info!(%reason, "resumed the stored IQM session");
                }
                return Ok(Acquired {
                    token: stored,
                    source: Source::Store,
                    store_turn,
                });
            }
            // Expired or due: it is newer than this layer's, so it is the one to renew.
            base = Some(stored);
        }
        // A set taken from the fleet's shared session is not refreshed here: another replica,
        // also on its own while the coordinator is down, may be spending the same refresh token.
        let base = base.filter(|p| p.shared_generation() == 0);
        let token = self
            .obtain_from_iqm(reason, base.as_deref(), logout_epoch)
            .await?;
        Ok(Acquired {
            token,
            source: Source::Iqm,
            store_turn,
        })
    }

    /// A new token from IQM: the refresh grant for `previous` if it can be used, else a login.
    /// Checked against `logout_epoch` before each call: a renewal a logout fenced off sends
    /// nothing more.
    pub(super) async fn obtain_from_iqm(
        &self,
        reason: RenewReason,
        previous: Option<&CachedToken>,
        logout_epoch: u64,
    ) -> Result<Arc<CachedToken>, AuthError> {
        self.fenced(logout_epoch)?;
        if let Some(token) = self.refresh(reason, previous, logout_epoch).await? {
            return Ok(token);
        }
        let token = self
            .with_retries(AuthEndpoint::Login, self.policy.auth_attempts, || async {
                self.fenced(logout_epoch)?;
                self.counters.login();
                let issued = self.clock.now();
                let set = self
                    .call_iqm(
                        AuthEndpoint::Login,
                        self.api.login(&self.email, &self.password),
                    )
                    .await?;
                self.cached_from_answer(set, issued, None)
            })
            .await?;
        info!(%reason, "logged in to IQM");
        Ok(token)
    }

    /// Builds the cached form of a token set. `refreshed_from` is the token a refresh answer
    /// renews: its `owId` is kept, and so is its refresh token unless IQM rotated it.
    pub(super) fn cached_from_answer(
        &self,
        set: TokenSet,
        issued: Instant,
        refreshed_from: Option<&CachedToken>,
    ) -> Result<Arc<CachedToken>, AuthError> {
        let endpoint = if refreshed_from.is_some() {
            AuthEndpoint::Refresh
        } else {
            AuthEndpoint::Login
        };
        let invalid = |problem: &str| AuthError::invalid(endpoint, http::StatusCode::OK, problem);
        let ow_id = set
            .ow_id
            .or(refreshed_from.map(|t| t.ow_id))
            .ok_or_else(|| invalid("the answer has no owId"))?;
        let refresh_token = set
            .refresh_token
            .or_else(|| refreshed_from.and_then(|t| t.refresh_token.clone()));
        if set.expires_in.is_zero() && !self.warned_zero_lifetime.swap(true, Ordering::Relaxed) {
            warn!(%endpoint, "IQM answered expires_in 0: every request will renew the token");
        }
        let token = self
            .new_cached_token(
                set.access_token,
                refresh_token,
                ow_id,
                issued,
                set.expires_in,
            )
            .map_err(invalid)?;
        self.refusals.lock().obtained_from_iqm(token.generation);
        Ok(token)
    }

    pub(super) fn new_cached_token(
        &self,
        access_token: Secret,
        refresh_token: Option<Secret>,
        ow_id: u64,
        issued: Instant,
        lifetime: Duration,
    ) -> Result<Arc<CachedToken>, &'static str> {
        let mut deadlines = Deadlines::compute(issued, lifetime, self.policy.refresh_margin);
        if self.fleet.is_some() {
            deadlines = deadlines.with_jittered_margin(self.random_unit());
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // The hot path may skip its clock read only while the renewer's timer can be trusted to
        // mark the deadline in time: not for a token due within moments.
        let known_fresh = self.policy.timer_marks_due
            && deadlines
                .renew_at
                .saturating_duration_since(self.clock.now())
                >= MIN_TIMER_LEAD;
        CachedToken::new(
            generation,
            access_token,
            refresh_token,
            ow_id,
            deadlines,
            known_fresh,
        )
        .map(Arc::new)
    }
}

/// Whether a token taken from elsewhere (the store) serves a renewal for `reason` at `now`
/// without an auth call: valid, and for an early renewal not itself due.
fn serves(token: &CachedToken, reason: RenewReason, now: Instant) -> bool {
    match token.deadlines.freshness(now) {
        Freshness::Fresh => true,
        Freshness::RenewSoon => reason != RenewReason::Proactive,
        Freshness::Expired => false,
    }
}
