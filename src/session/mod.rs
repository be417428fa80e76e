//! The session: one token cache shared by every clone of an `IqmAuth`, and the mechanisms that
//! keep it filled. One mechanism per file, each stating the invariant it keeps:
//!
//! - this file: the cache and its reads. The hot path ([`Session::usable_now`]) reads it
//!   through an `arc-swap` snapshot, taking no lock; the cache only ever holds a complete
//!   [`CachedToken`], replaced whole.
//! - [`flight`]: the single flight. At most one renewal runs at a time, in a task of its own, so
//!   a caller that gives up never cancels it for the others; concurrent callers that saw the
//!   same stale token cause one renewal and all get its outcome.
//! - [`acquire`]: what one renewal does. A newer set from the token store, else the refresh
//!   grant, else a login.
//! - [`stored`]: the token store, read before every renewal and written after every new set,
//!   one layer at a time per store, and only ever resuming this account's sets.
//! - [`refresh`]: the refresh grant. A refresh token is never presented twice unless IQM
//!   provably did not act on it, and a failing refresh gives way to a login.
//! - [`refusals`]: 401s that are not the token's fault: an endpoint that refused a token and
//!   then one obtained from IQM after that refuses the user, and its 401s are handed back
//!   without a renewal for a while.
//! - [`retry`]: the budget check around every auth call, retries of a login within a renewal
//!   with backoff, and the seeded jitter.
//! - [`pacing`]: pauses between renewals after failures, so an outage or a wrong password costs
//!   a bounded number of auth calls.
//! - [`budget`]: the budget for failed auth calls, so that no fault can spend more than a set
//!   share of IQM's rate limit.
//! - [`renewer`]: the background renewer, which renews a token in use before it expires.
//! - [`gate`]: IQM's rate limit, which every request and auth call passes before it is sent:
//!   the window a 429 closes, and the turns of the request rate (the fleet's when shared).
//! - [`fleet`]: renewals through the fleet's shared session, when one is configured, and
//!   [`lease`]: the renewal of the replica holding the fleet's lease, and [`fleet_state`]: what
//!   a replica keeps of the fleet.

mod acquire;
mod budget;

pub(crate) use budget::{CallBudget, Reservation};
mod fleet;
mod fleet_state;
mod flight;
mod gate;
mod lease;
mod pacing;
mod refresh;
mod refusals;
mod renewer;
mod retry;
mod seen;
mod stored;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{Instrument, info_span, warn};

use crate::account::AccountFingerprint;
use crate::auth_api::AuthApi;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::AuthEndpoint;
use crate::error::{AuthError, ConfigError};
use crate::iqm_api::IqmApi;
use crate::limit::{Kind, Limits};
use crate::secret::Secret;
use crate::stats::{Counters, RenewReason, Stats};
use crate::store::{NewTokensHook, TokenStore};
use crate::token::{CachedToken, Freshness, TokenSet};

use fleet_state::Fleet;
use flight::RenewalSlot;

/// How renewals are paced and retried (from the builder).
#[derive(Debug, Clone, Copy)]
struct Policy {
    refresh_margin: Duration,
    auth_timeout: Duration,
    acquire_timeout: Duration,
    rejection_cool_down: Duration,
    max_rejection_cool_down: Duration,
    rate_limit_pause: Duration,
    endpoint_refusal_window: Duration,
    auth_attempts: u32,
    backoff_jitter: bool,
    background_renewal: bool,
    timer_marks_due: bool,
    auth_call_budget: (u32, u32),
}

pub(crate) struct Session {
    api: Arc<dyn AuthApi>,
    email: String,
    password: Secret,
    clock: Arc<dyn Clock>,
    policy: Policy,
    current: ArcSwapOption<CachedToken>,
    renewal: Mutex<RenewalSlot>,
    budget: Mutex<CallBudget>,
    /// Moved on by every logout; a renewal that started under an older value publishes nothing.
    logout_epoch: AtomicU64,
    /// Held while a renewal publishes its token (store, hook, cache) and while a logout clears
    /// them, so that neither sees the other half-done.
    publishing: tokio::sync::Mutex<()>,
    /// Endpoints that answered 401, to tell a refusing endpoint from a revoked token.
    refusals: Mutex<refusals::Refusals>,
    /// A filter of the endpoints `refusals` holds: the hot path reads only this.
    refusal_bits: AtomicU64,
    /// Whether the warning about `expires_in` 0 was logged (it is logged once, not per request).
    warned_zero_lifetime: AtomicBool,
    next_generation: AtomicU64,
    jitter: Mutex<retry::Jitter>,
    renewer: Mutex<Option<AbortHandle>>,
    renewer_wake: Arc<Notify>,
    store: Arc<dyn TokenStore>,
    /// This layer's turn at its store, and the refresh tokens that may be spent (which the
    /// store may hold), shared with every other layer on the same store.
    store_shared: Arc<stored::StoreShared>,
    /// The fingerprint of this layer's account, kept with every stored set.
    account: AccountFingerprint,
    /// Whether a foreign stored session was warned about (once, not per renewal).
    warned_foreign_session: AtomicBool,
    on_new_tokens: Option<NewTokensHook>,
    /// The fleet's shared session, if one is configured.
    fleet: Option<Fleet>,
    /// IQM's rate limit: the 429 window and the request rate.
    limits: Limits,
    pub(crate) counters: Counters,
}

impl Session {
    pub(crate) fn new(config: Config) -> Result<Self, ConfigError> {
        let api: Arc<dyn AuthApi> = match config.auth_api {
            Some(api) => api,
            None => Arc::new(IqmApi::new(
                config.http,
                &config.base,
                config.client_id,
                config.client_secret,
                config.workspace_host,
            )?),
        };
        let limits = Limits::new(config.request_rate, config.rate_limit_wait, &config.clock);
        Ok(Self {
            api,
            email: config.email,
            password: config.password,
            clock: config.clock,
            policy: Policy {
                refresh_margin: config.refresh_margin,
                auth_timeout: config.auth_timeout,
                acquire_timeout: config.acquire_timeout,
                rejection_cool_down: config.rejection_cool_down,
                max_rejection_cool_down: config.max_rejection_cool_down,
                rate_limit_pause: config.rate_limit_pause,
                endpoint_refusal_window: config.endpoint_refusal_window,
                auth_attempts: config.auth_attempts,
                backoff_jitter: config.backoff_jitter,
                background_renewal: config.background_renewal,
                timer_marks_due: config.timer_marks_due,
                auth_call_budget: config.auth_call_budget,
            },
            current: ArcSwapOption::empty(),
            renewal: Mutex::new(RenewalSlot::default()),
            budget: Mutex::new(CallBudget::new(
                config.auth_call_budget.0,
                config.auth_call_budget.1,
            )),
            logout_epoch: AtomicU64::new(0),
            publishing: tokio::sync::Mutex::new(()),
            refusals: Mutex::default(),
            refusal_bits: AtomicU64::new(0),
            warned_zero_lifetime: AtomicBool::new(false),
            next_generation: AtomicU64::new(1),
            jitter: Mutex::new(retry::Jitter::new(config.jitter_seed)),
            renewer: Mutex::new(None),
            renewer_wake: Arc::new(Notify::new()),
            store_shared: stored::shared_by_layers_of(&config.token_store),
            store: config.token_store,
            account: config.account,
            warned_foreign_session: AtomicBool::new(false),
            on_new_tokens: config.on_new_tokens,
            fleet: config
                .shared
                .map(|(coordinator, scope)| Fleet::new(coordinator, scope)),
            limits,
            counters: Counters::default(),
        })
    }

    /// The hot path: a cached token that may be used now, if there is one. Takes no lock. A
    /// token close to expiry is still used, and a renewal is started in the background.
    pub(crate) fn usable_now<R>(
        self: &Arc<Self>,
        with: impl FnOnce(&CachedToken) -> R,
    ) -> Option<R> {
        let guard = self.current.load();
        let token = guard.as_deref()?;
        if token.known_fresh() {
            token.mark_used();
            return Some(with(token));
        }
        if token.was_refused() {
            return None;
        }
        match token.deadlines.freshness(self.clock.now()) {
            Freshness::Fresh => {}
            Freshness::RenewSoon => {
                // Only the first request to see the token in this state pays for starting the
                // renewal; the background renewer retries it if it fails.
                if token.claim_early_renewal() {
                    self.start_renewal(RenewReason::Proactive, Some(token.generation));
                    self.renewer_wake.notify_one();
                }
            }
            Freshness::Expired => return None,
        }
        token.mark_used();
        Some(with(token))
    }

    /// The slow path: waits for a token, starting or joining a renewal. Called when
    /// [`usable_now`](Self::usable_now) found none.
    pub(crate) async fn wait_for_token(self: &Arc<Self>) -> Result<Arc<CachedToken>, AuthError> {
        let (reason, stale) = match self.current.load_full() {
            // Stored by a renewal that finished since the hot path looked.
            Some(token)
                if !token.was_refused()
                    && token.deadlines.freshness(self.clock.now()) != Freshness::Expired =>
            {
                token.mark_used();
                return Ok(token);
            }
            Some(token) if token.was_refused() => {
                (RenewReason::Unauthorized, Some(token.generation))
            }
            Some(token) => (RenewReason::Expired, Some(token.generation)),
            None => (RenewReason::FirstUse, None),
        };
        let token = self.renew(reason, stale).await?;
        token.mark_used();
        Ok(token)
    }

    /// One call to IQM's auth endpoints, abandoned after `auth_timeout` (IQM may have acted on
    /// it all the same).
    pub(super) async fn call_iqm<T>(
        &self,
        endpoint: AuthEndpoint,
        call: impl std::future::Future<Output = Result<T, AuthError>>,
    ) -> Result<T, AuthError> {
        let after = self.policy.auth_timeout;
        let result = tokio::time::timeout(after, call)
            .await
            .unwrap_or(Err(AuthError::TimedOut { endpoint, after }));
        if let Err(err) = &result {
            if err.status() == Some(http::StatusCode::TOO_MANY_REQUESTS) {
                if let Some(closed_for) = self.rate_limited(err.retry_after()) {
                    self.share_window(closed_for).await;
                }
            }
        }
        result
    }

    /// `Err(LoggedOut)` once a logout has moved the epoch on from `logout_epoch`: a renewal
    /// checks it before each auth call and before it publishes anything.
    pub(super) fn fenced(&self, logout_epoch: u64) -> Result<(), AuthError> {
        if self.logout_epoch.load(Ordering::Relaxed) == logout_epoch {
            Ok(())
        } else {
            Err(AuthError::LoggedOut)
        }
    }

    /// IQM answered 401 to token `generation`, and it may be the token's fault: requests stop
    /// using it and wait for the renewal the caller starts.
    pub(crate) fn token_refused(&self, generation: u64) {
        if let Some(token) = self.current.load().as_deref() {
            if token.generation == generation {
                token.mark_refused();
            }
        }
    }

    /// The token cached now, whatever its state.
    pub(crate) fn current(&self) -> Option<Arc<CachedToken>> {
        self.current.load_full()
    }

    /// Forgets the cached token and invalidates it at IQM.
    ///
    /// Invariants: a renewal that started before the logout publishes nothing afterwards (see
    /// the logout epoch in [`flight`]), and a request made after the logout returned starts a
    /// renewal of its own (a login), never joins the fenced one. The store and the shared
    /// session are cleared before the epoch moves on, so no renewal of the new epoch can
    /// resume the session just logged out.
    pub(crate) async fn logout(&self) -> Result<(), AuthError> {
        let span = info_span!("iqm_auth.logout");
        async {
            let token = {
                let _publishing = self.publishing.lock().await;
                self.clear_shared().await;
                if let Err(err) = self.bounded_store_call(self.store.clear()).await {
                    self.counters.store_error();
                    warn!(error = %err, "could not clear the stored IQM session");
                }
                let mut slot = self.renewal.lock();
                self.logout_epoch.fetch_add(1, Ordering::Relaxed);
                slot.detach();
                self.current.swap(None)
            };
            match token {
                Some(token) => {
                    self.admit(Kind::Auth).await?;
                    self.counters.logout();
                    let result = self
                        .call_iqm(AuthEndpoint::Logout, self.api.logout(&token.access_token))
                        .await;
                    if let Err(err) = &result {
                        warn!(class = %err.class(), error = %err, "the IQM logout call failed");
                    }
                    result
                }
                None => Ok(()),
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn sign_up(
        &self,
        email: &str,
        password: &Secret,
    ) -> Result<TokenSet, AuthError> {
        self.admit(Kind::Auth).await?;
        self.counters.sign_up();
        let result = self
            .call_iqm(AuthEndpoint::SignUp, self.api.sign_up(email, password))
            .instrument(info_span!("iqm_auth.sign_up"))
            .await;
        if let Err(err) = &result {
            warn!(class = %err.class(), error = %err, "the IQM sign-up call failed");
        }
        result
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot();
        stats.rate_limited_for = self.rate_limited_for();
        stats.token_expires_in = self.current.load().as_deref().map(|token| {
            token
                .deadlines
                .expires_at
                .saturating_duration_since(self.clock.now())
        });
        stats
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.get_mut().take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("Session")
            .field("api", &self.api)
            .field("email", &self.email)
            .field("password", &self.password)
            .field("policy", &self.policy)
            .field("token_generation", &current.as_ref().map(|t| t.generation))
            .field("fleet", &self.fleet)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn policy() -> Policy {
        Policy {
            refresh_margin: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(15),
            rejection_cool_down: Duration::from_secs(30),
            max_rejection_cool_down: Duration::from_secs(15 * 60),
            rate_limit_pause: Duration::from_secs(10),
            endpoint_refusal_window: Duration::from_secs(10),
            auth_attempts: 3,
            backoff_jitter: true,
            background_renewal: true,
            timer_marks_due: true,
            auth_call_budget: (10, 3),
        }
    }
}
