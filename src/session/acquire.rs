//! Acquisition: how one renewal obtains a token. The refresh-token grant when a refresh token is
//! cached, a password login when there is none or IQM refuses the refresh; the token store read
//! once before the first login and written after every new set; the cached form of an answer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tracing::{info, warn};

use crate::error::{AuthEndpoint, AuthError};
use crate::secret::Secret;
use crate::stats::RenewReason;
use crate::store::{NewTokensHook, StoreError, StoredTokens};
use crate::token::{CachedToken, Deadlines, Freshness, TokenSet, check_token_bytes};

use super::Session;
use super::retry::random_unit;

/// A token is trusted to stay fresh without clock reads only if its renewal deadline is at least
/// this far away when it is stored, so that a late timer cannot let an expired token be used.
const MIN_TIMER_LEAD: Duration = Duration::from_secs(1);

/// The most a token store may take to load, save or clear.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an acquired token came from: only new sets from IQM are saved to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Iqm,
    Store,
    /// The fleet's shared session, renewed by another replica.
    Shared,
}

impl Session {
    /// The one place where a renewal obtains a token: through the fleet's shared session when
    /// one is configured and reachable, else on this replica's own, within the acquisition
    /// budget.
    pub(super) async fn acquire(
        &self,
        reason: RenewReason,
    ) -> Result<(Arc<CachedToken>, Source), AuthError> {
        if let Some(fleet) = &self.fleet {
            if let Some(acquired) = self.acquire_shared(fleet, reason).await? {
                return Ok(acquired);
            }
        }
        let budget = self.policy.acquire_timeout;
        tokio::time::timeout(budget, self.acquire_on_own(reason))
            .await
            .unwrap_or(Err(AuthError::BudgetExhausted(budget)))
    }

    /// Acquisition by this replica alone: the stored session if it is usable, else IQM.
    async fn acquire_on_own(
        &self,
        reason: RenewReason,
    ) -> Result<(Arc<CachedToken>, Source), AuthError> {
        let mut previous = self.current.load_full();
        if previous.is_none() && !self.store_consulted.swap(true, Ordering::Relaxed) {
            match self.load_stored().await {
                Some(stored)
                    if stored.deadlines.freshness(self.clock.now()) != Freshness::Expired =>
                {
                    info!(%reason, "resumed the stored IQM session");
                    return Ok((stored, Source::Store));
                }
                // Expired: its refresh token may still renew it.
                stored => previous = stored,
            }
        }
        // A set taken from the fleet's shared session is not refreshed here: another replica,
        // also on its own while the coordinator is down, may be spending the same refresh token.
        let previous = previous.filter(|p| p.shared_generation() == 0);
        let token = self.obtain_from_iqm(reason, previous.as_deref()).await?;
        Ok((token, Source::Iqm))
    }

    /// A new token from IQM: the refresh grant for `previous` if it can be used, else a login.
    pub(super) async fn obtain_from_iqm(
        &self,
        reason: RenewReason,
        previous: Option<&CachedToken>,
    ) -> Result<Arc<CachedToken>, AuthError> {
        if let Some(token) = self.refresh(reason, previous).await? {
            return Ok(token);
        }
        let token = self
            .with_retries(AuthEndpoint::Login, self.policy.auth_attempts, || async {
                self.counters.login();
                let issued = self.clock.now();
                let set = self.api.login(&self.email, &self.password).await?;
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
        self.new_cached_token(
            set.access_token,
            refresh_token,
            ow_id,
            issued,
            set.expires_in,
        )
        .map_err(invalid)
    }

    fn new_cached_token(
        &self,
        access_token: Secret,
        refresh_token: Option<Secret>,
        ow_id: u64,
        issued: Instant,
        lifetime: Duration,
    ) -> Result<Arc<CachedToken>, &'static str> {
        let mut deadlines = Deadlines::compute(issued, lifetime, self.policy.refresh_margin);
        if self.fleet.is_some() {
            deadlines = deadlines.with_jittered_margin(random_unit());
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

    /// The token set kept by the store, if it holds a usable one. Reported and ignored when
    /// the store fails or holds something unusable.
    async fn load_stored(&self) -> Option<Arc<CachedToken>> {
        let stored = match self.bounded_store_call(self.store.load()).await {
            Ok(stored) => stored?,
            Err(err) => {
                self.counters.store_error();
                warn!(error = %err, "could not load the stored IQM session; logging in");
                return None;
            }
        };
        let token = self.cached_from_stored(stored);
        if token.is_none() {
            self.counters.store_error();
            warn!("the stored IQM session holds an unusable token; logging in");
        }
        token
    }

    /// The cached form of a stored token set, if its tokens can be sent as headers.
    pub(super) fn cached_from_stored(&self, stored: StoredTokens) -> Option<Arc<CachedToken>> {
        let tokens_ok = check_token_bytes(stored.access_token.expose()).is_ok()
            && stored
                .refresh_token
                .as_ref()
                .is_none_or(|t| check_token_bytes(t.expose()).is_ok());
        if !tokens_ok {
            return None;
        }
        let remaining = stored.remaining();
        self.new_cached_token(
            stored.access_token,
            stored.refresh_token,
            stored.ow_id,
            self.clock.now(),
            remaining,
        )
        .ok()
    }

    /// The stored form of a cached token: its expiry as wall-clock time.
    pub(super) fn stored_from_cached(&self, token: &CachedToken) -> StoredTokens {
        let remaining = token
            .deadlines
            .expires_at
            .saturating_duration_since(self.clock.now());
        StoredTokens::new(
            token.access_token.clone(),
            token.refresh_token.clone(),
            token.ow_id,
            SystemTime::now() + remaining,
        )
    }

    /// Hands a new token set from IQM to the store and the `on_new_tokens` hook.
    pub(super) async fn persist(&self, token: &CachedToken) {
        let stored = self.stored_from_cached(token);
        if let Err(err) = self.bounded_store_call(self.store.save(&stored)).await {
            self.counters.store_error();
            warn!(error = %err, "could not save the IQM session");
        }
        if let Some(NewTokensHook(hook)) = &self.on_new_tokens {
            // User code: a panic in it must not abort the renewal, whose token is good.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&stored))).is_err() {
                self.counters.user_code_panic();
                warn!("the on_new_tokens hook panicked; the new IQM token is used all the same");
            }
        }
    }

    /// A store call, given [`STORE_TIMEOUT`] so that a hanging store cannot hold up renewals,
    /// and isolated so that a panicking store is an error, not an aborted renewal.
    pub(super) async fn bounded_store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(STORE_TIMEOUT, AssertUnwindSafe(call).catch_unwind()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => {
                self.counters.user_code_panic();
                Err(StoreError::Other("the token store panicked".into()))
            }
            Err(_) => Err(StoreError::Other("timed out".into())),
        }
    }
}
