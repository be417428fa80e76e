//! The shared token cache: a lock-free read on the hot path, one place where tokens are
//! obtained (single flight), generation-checked renewal, failure pacing, and the background
//! renewer.
//!
//! Invariants:
//! - `current` only ever holds a complete [`CachedToken`]; it is replaced whole, and a failed
//!   renewal never replaces it.
//! - At most one renewal ("flight") runs at a time. It runs in a task of its own, so a caller
//!   that gives up (drops its future) never cancels it for the others, and a rotated refresh
//!   token is always stored together with the access token it came with.
//! - A caller asks for a renewal naming the generation it found wanting; if the cache holds a
//!   different generation by the time it asks, that token is returned instead. So any number of
//!   concurrent callers that saw the same stale token cause one renewal.
//! - After a failed renewal, new renewals wait out a pause (see [`Pacing`]); until then callers
//!   get the same error at once, without an auth call.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{AuthEndpoint, AuthError, ConfigError};
use crate::iqm_api::IqmApi;
use crate::secret::Secret;
use crate::stats::{Counters, RenewReason, Stats};
use crate::store::{NewTokensHook, StoreError, StoredTokens, TokenStore};
use crate::token::{CachedToken, Deadlines, Freshness, TokenSet, check_token_bytes};

/// How long the background renewer waits before it tries again after a failed early renewal
/// (the token it holds is still valid meanwhile).
const PROACTIVE_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// A token is trusted to stay fresh without clock reads only if its renewal deadline is at least
/// this far away when it is stored, so that a late timer cannot let an expired token be used.
const MIN_TIMER_LEAD: Duration = Duration::from_secs(1);

/// The most a token store may take to load, save or clear.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a caller starts a renewal again when the one it waited on was interrupted
/// before it answered (its task aborted, e.g. by a runtime shutting down).
const INTERRUPTED_FLIGHT_RETRIES: usize = 2;

/// The first backoff between tries of one auth call; it doubles with each try, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A `Retry-After` longer than this is not waited for inside one renewal: the renewal fails,
/// and [`Pacing`] keeps new ones from starting until IQM's time has passed.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(5);

/// The pause after the second failed renewal in a row; it doubles with each further failure.
const FIRST_OUTAGE_PAUSE: Duration = Duration::from_secs(2);
/// The longest pause between renewals during an outage.
const MAX_OUTAGE_PAUSE: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

type Answer = Option<Result<Arc<CachedToken>, AuthError>>;

/// How renewals are paced and retried (from the builder).
#[derive(Debug, Clone, Copy)]
struct Policy {
    refresh_margin: Duration,
    acquire_timeout: Duration,
    rejection_cool_down: Duration,
    auth_attempts: u32,
    background_renewal: bool,
    timer_marks_due: bool,
}

pub(crate) struct Session {
    api: IqmApi,
    email: String,
    password: Secret,
    clock: Arc<dyn Clock>,
    policy: Policy,
    current: ArcSwapOption<CachedToken>,
    flights: Mutex<Flights>,
    next_generation: AtomicU64,
    /// The generation whose refresh token IQM refused; it is not tried again (0: none).
    refused_refresh: AtomicU64,
    renewer: Mutex<Option<AbortHandle>>,
    renewer_wake: Arc<Notify>,
    store: Arc<dyn TokenStore>,
    /// Whether the store was read (once, before the first login).
    store_consulted: AtomicBool,
    on_new_tokens: Option<NewTokensHook>,
    pub(crate) counters: Counters,
}

/// Where an obtained token came from: only new sets from IQM are saved to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Iqm,
    Store,
}

#[derive(Default)]
struct Flights {
    running: Option<Flight>,
    next_id: u64,
    pacing: Pacing,
}

struct Flight {
    id: u64,
    answer: watch::Receiver<Answer>,
}

/// Failure pacing: after a failed renewal, no new one starts before `until`, and callers get
/// `error` at once. The first transient failure in a row pauses nothing (an outage that has
/// passed is retried at once); the next ones pause 2 s, 4 s, … up to [`MAX_OUTAGE_PAUSE`]. A
/// `Retry-After` lengthens the pause to IQM's time; rejected credentials pause for the
/// cool-down.
#[derive(Default)]
struct Pacing {
    failures_in_a_row: u32,
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
        let rejected_credentials = matches!(
            err,
            AuthError::Rejected { endpoint: AuthEndpoint::Login, status, .. }
                if status.is_client_error() && !err.is_transient()
        );
        let pause = if rejected_credentials {
            policy.rejection_cool_down
        } else {
            outage
        };
        pause.max(err.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER))
    }

    fn record(&mut self, result: Result<(), &AuthError>, now: Instant, policy: &Policy) {
        match result {
            Ok(()) => *self = Self::default(),
            Err(err) => {
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                let pause = self.pause_after(err, policy);
                self.blocked = (!pause.is_zero()).then(|| (now + pause, err.clone()));
                if !pause.is_zero() {
                    info!(class = err.class(), pause = ?pause, "pausing IQM token renewals");
                }
            }
        }
    }

    fn blocked_at(&self, now: Instant) -> Option<&AuthError> {
        match &self.blocked {
            Some((until, err)) if now < *until => Some(err),
            _ => None,
        }
    }
}

impl Session {
    pub(crate) fn new(config: Config) -> Result<Self, ConfigError> {
        let api = IqmApi::new(
            config.http,
            &config.base,
            config.client_id,
            config.client_secret,
            config.workspace_host,
            config.auth_timeout,
        )?;
        Ok(Self {
            api,
            email: config.email,
            password: config.password,
            clock: config.clock,
            policy: Policy {
                refresh_margin: config.refresh_margin,
                acquire_timeout: config.acquire_timeout,
                rejection_cool_down: config.rejection_cool_down,
                auth_attempts: config.auth_attempts,
                background_renewal: config.background_renewal,
                timer_marks_due: config.timer_marks_due,
            },
            current: ArcSwapOption::empty(),
            flights: Mutex::new(Flights::default()),
            next_generation: AtomicU64::new(1),
            refused_refresh: AtomicU64::new(0),
            renewer: Mutex::new(None),
            renewer_wake: Arc::new(Notify::new()),
            store: config.token_store,
            store_consulted: AtomicBool::new(false),
            on_new_tokens: config.on_new_tokens,
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
        match token.deadlines.freshness(self.clock.now()) {
            Freshness::Fresh => {}
            Freshness::RenewSoon => {
                // Only the first request to see the token in this state pays for starting the
                // renewal; the background renewer retries it if it fails.
                if token.claim_early_renewal() {
                    drop(self.join_or_start(RenewReason::Proactive, Some(token.generation)));
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
            Some(token) if token.deadlines.freshness(self.clock.now()) != Freshness::Expired => {
                token.mark_used();
                return Ok(token);
            }
            Some(token) => (RenewReason::Expired, Some(token.generation)),
            None => (RenewReason::FirstUse, None),
        };
        let token = self.renew(reason, stale).await?;
        token.mark_used();
        Ok(token)
    }

    /// The token cached now, whatever its state.
    pub(crate) fn current(&self) -> Option<Arc<CachedToken>> {
        self.current.load_full()
    }

    /// Renews the token unless the cache already holds a generation other than `stale` (the one
    /// the caller found wanting; `None` when it found the cache empty). Joins the renewal that is
    /// running, if any. Every caller of one renewal gets its result, success or error.
    pub(crate) async fn renew(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
    ) -> Result<Arc<CachedToken>, AuthError> {
        for _ in 0..INTERRUPTED_FLIGHT_RETRIES {
            let mut answer = match self.join_or_start(reason, stale)? {
                Joined::Cached(token) => return Ok(token),
                Joined::Waiting(answer) => answer,
            };
            if let Ok(answer) = answer.wait_for(Option::is_some).await {
                if let Some(result) = answer.as_ref() {
                    return result.clone();
                }
            }
            debug!("a token renewal stopped before it answered; starting another");
        }
        Err(AuthError::Interrupted)
    }

    /// Joins the running renewal, returns a token newer than `stale`, fails fast while renewals
    /// are paused, or starts a renewal in a task of its own.
    fn join_or_start(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
    ) -> Result<Joined, AuthError> {
        let mut flights = self.flights.lock();
        if let Some(flight) = &flights.running {
            self.counters.shared_wait();
            return Ok(Joined::Waiting(flight.answer.clone()));
        }
        if let Some(token) = self.current.load_full() {
            if Some(token.generation) != stale {
                return Ok(Joined::Cached(token));
            }
        }
        if let Some(err) = flights.pacing.blocked_at(self.clock.now()) {
            return Err(err.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AuthError::NoRuntime)?;
        let id = flights.next_id;
        flights.next_id += 1;
        let (sender, answer) = watch::channel(None);
        flights.running = Some(Flight {
            id,
            answer: answer.clone(),
        });
        drop(flights);
        self.counters.renewal(reason);
        // The guard exists before the task first runs, so even a renewal dropped unpolled (its
        // runtime shutting down) frees the slot.
        let release = ReleaseFlight {
            session: Arc::clone(self),
            id,
        };
        runtime
            .spawn(fly(release, reason, sender).instrument(info_span!("iqm_auth.renew", %reason)));
        Ok(Joined::Waiting(answer))
    }

    /// The one place where tokens are obtained from IQM, within the acquisition budget: the
    /// refresh-token grant when a refresh token is cached, and a password login when there is
    /// none or IQM refuses the refresh (a transient refresh failure is returned as it is: IQM is
    /// in trouble, and a login would only add load).
    async fn obtain(&self, reason: RenewReason) -> Result<(Arc<CachedToken>, Source), AuthError> {
        let budget = self.policy.acquire_timeout;
        tokio::time::timeout(budget, async {
            let mut previous = self.current.load_full();
            if previous.is_none() && !self.store_consulted.swap(true, Ordering::Relaxed) {
                match self.load_stored().await {
                    Some(stored) if stored.deadlines.freshness(self.clock.now()) != Freshness::Expired => {
                        info!(%reason, "resumed the stored IQM session");
                        return Ok((stored, Source::Store));
                    }
                    // Expired: its refresh token may still renew it.
                    stored => previous = stored,
                }
            }
            let refused = self.refused_refresh.load(Ordering::Relaxed);
            if let Some(previous) = previous.as_deref().filter(|p| p.generation != refused) {
                if let Some(refresh_token) = &previous.refresh_token {
                    let issued = self.clock.now();
                    let refreshed = self
                        .with_retries(AuthEndpoint::Refresh, || {
                            self.counters.refresh();
                            self.api.refresh(refresh_token)
                        })
                        .await
                        .and_then(|set| self.cache(set, issued, Some(previous)));
                    match refreshed {
                        Ok(token) => {
                            info!(%reason, "refreshed the IQM token");
                            return Ok((token, Source::Iqm));
                        }
                        Err(err) if err.is_transient() => return Err(err),
                        Err(err) => {
                            self.refused_refresh
                                .store(previous.generation, Ordering::Relaxed);
                            warn!(class = err.class(), error = %err, "IQM refused the token refresh; logging in again");
                        }
                    }
                }
            }
            let issued = self.clock.now();
            let set = self
                .with_retries(AuthEndpoint::Login, || {
                    self.counters.login();
                    self.api.login(&self.email, &self.password)
                })
                .await?;
            info!(%reason, "logged in to IQM");
            self.cache(set, issued, None).map(|token| (token, Source::Iqm))
        })
        .await
        .unwrap_or(Err(AuthError::BudgetExhausted(budget)))
    }

    /// Tries `call` up to the configured number of times while it fails transiently, with
    /// exponential backoff and jitter, or IQM's `Retry-After` when it is short.
    async fn with_retries<F, Fut>(
        &self,
        endpoint: AuthEndpoint,
        mut call: F,
    ) -> Result<TokenSet, AuthError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<TokenSet, AuthError>>,
    {
        let mut attempt = 1;
        loop {
            let err = match call().await {
                Ok(set) => return Ok(set),
                Err(err) => err,
            };
            if !err.is_transient() || attempt >= self.policy.auth_attempts {
                return Err(err);
            }
            let wait = match err.retry_after() {
                Some(wait) if wait > MAX_RETRY_AFTER_WAIT => return Err(err),
                Some(wait) => wait,
                None => jittered(FIRST_BACKOFF.saturating_mul(1 << (attempt - 1).min(16))),
            };
            warn!(%endpoint, attempt, class = err.class(), error = %err, backoff = ?wait, "IQM auth call failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Builds the cached form of a token set. `refreshed_from` is the token a refresh answer
    /// renews: its `owId` is kept, and so is its refresh token unless IQM rotated it.
    fn cache(
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
        self.token(
            set.access_token,
            refresh_token,
            ow_id,
            issued,
            set.expires_in,
        )
        .map_err(invalid)
    }

    fn token(
        &self,
        access_token: Secret,
        refresh_token: Option<Secret>,
        ow_id: u64,
        issued: Instant,
        lifetime: Duration,
    ) -> Result<Arc<CachedToken>, &'static str> {
        let deadlines = Deadlines::compute(issued, lifetime, self.policy.refresh_margin);
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
        let tokens_ok = check_token_bytes(stored.access_token.expose()).is_ok()
            && stored
                .refresh_token
                .as_ref()
                .is_none_or(|t| check_token_bytes(t.expose()).is_ok());
        let token = tokens_ok
            .then(|| {
                let remaining = stored.remaining();
                self.token(
                    stored.access_token,
                    stored.refresh_token,
                    stored.ow_id,
                    self.clock.now(),
                    remaining,
                )
                .ok()
            })
            .flatten();
        if token.is_none() {
            self.counters.store_error();
            warn!("the stored IQM session holds an unusable token; logging in");
        }
        token
    }

    /// Hands a new token set from IQM to the store and the `on_new_tokens` hook.
    async fn persist(&self, token: &CachedToken) {
        let remaining = token
            .deadlines
            .expires_at
            .saturating_duration_since(self.clock.now());
        let stored = StoredTokens::new(
            token.access_token.clone(),
            token.refresh_token.clone(),
            token.ow_id,
            SystemTime::now() + remaining,
        );
        if let Err(err) = self.bounded_store_call(self.store.save(&stored)).await {
            self.counters.store_error();
            warn!(error = %err, "could not save the IQM session");
        }
        if let Some(NewTokensHook(hook)) = &self.on_new_tokens {
            hook(&stored);
        }
    }

    /// A store call, given [`STORE_TIMEOUT`] so that a hanging store cannot hold up renewals.
    async fn bounded_store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(STORE_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("timed out".into())))
    }

    /// Forgets the cached token and invalidates it at IQM.
    pub(crate) async fn logout(&self) -> Result<(), AuthError> {
        let token = {
            let _flights = self.flights.lock();
            self.current.swap(None)
        };
        self.store_consulted.store(true, Ordering::Relaxed);
        if let Err(err) = self.bounded_store_call(self.store.clear()).await {
            self.counters.store_error();
            warn!(error = %err, "could not clear the stored IQM session");
        }
        match token {
            Some(token) => self.api.logout(&token.access_token).await,
            None => Ok(()),
        }
    }

    pub(crate) async fn sign_up(
        &self,
        email: &str,
        password: &Secret,
    ) -> Result<TokenSet, AuthError> {
        self.api.sign_up(email, password).await
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Starts the background renewer once a token exists (and again if the runtime it ran on
    /// has gone away).
    fn ensure_renewer(self: &Arc<Self>) {
        if !self.policy.background_renewal {
            return;
        }
        let mut renewer = self.renewer.lock();
        if renewer.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(renew_ahead_of_expiry(
                Arc::downgrade(self),
                Arc::clone(&self.renewer_wake),
            ));
            *renewer = Some(task.abort_handle());
        }
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
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

enum Joined {
    /// The cache already holds a newer token.
    Cached(Arc<CachedToken>),
    /// A renewal runs in a task; wait for its answer.
    Waiting(watch::Receiver<Answer>),
}

/// Frees the flight slot when a renewal ends, also when its task is aborted half-way, so that
/// later callers start a new renewal instead of waiting on one that will never answer.
struct ReleaseFlight {
    session: Arc<Session>,
    id: u64,
}

impl ReleaseFlight {
    /// Frees the slot if it still holds this renewal; the caller holds the lock.
    fn free(&self, flights: &mut Flights) {
        if flights.running.as_ref().is_some_and(|f| f.id == self.id) {
            flights.running = None;
        }
    }
}

impl Drop for ReleaseFlight {
    fn drop(&mut self) {
        self.free(&mut self.session.flights.lock());
    }
}

/// One renewal, from the first auth call to the stored token and the answer to its waiters.
async fn fly(release: ReleaseFlight, reason: RenewReason, sender: watch::Sender<Answer>) {
    let session = &release.session;
    let result = match session.obtain(reason).await {
        Ok((token, source)) => {
            // Before the token is published, so that stored sets follow the order of renewals.
            if source == Source::Iqm {
                session.persist(&token).await;
            }
            Ok(token)
        }
        Err(err) => Err(err),
    };
    {
        let mut flights = session.flights.lock();
        if let Ok(token) = &result {
            session.current.store(Some(Arc::clone(token)));
        }
        let now = session.clock.now();
        flights
            .pacing
            .record(result.as_ref().map(drop), now, &session.policy);
        release.free(&mut flights);
    }
    match &result {
        Ok(token) => {
            debug!(generation = token.generation, "stored a new IQM token");
            session.ensure_renewer();
            session.renewer_wake.notify_one();
        }
        Err(err) => {
            session.counters.failed_renewal(err);
            warn!(class = err.class(), error = %err, "IQM token renewal failed");
        }
    }
    sender.send_replace(Some(result));
}

/// Renews a token that is in use shortly before it expires, so that requests never wait for a
/// renewal in steady state. Holds only a weak reference between renewals: when the last
/// `IqmAuth` clone is dropped, the session's `Drop` aborts this task.
async fn renew_ahead_of_expiry(session: Weak<Session>, wake: Arc<Notify>) {
    loop {
        let pause = {
            let Some(session) = session.upgrade() else {
                return;
            };
            match session.current() {
                Some(token) => {
                    let now = session.clock.now();
                    let freshness = token.deadlines.freshness(now);
                    if freshness != Freshness::Fresh {
                        token.forget_known_fresh();
                    }
                    match freshness {
                        Freshness::Fresh => Some(token.deadlines.renew_at - now),
                        Freshness::RenewSoon if token.was_used() => {
                            match session
                                .renew(RenewReason::Proactive, Some(token.generation))
                                .await
                            {
                                Ok(_) => continue,
                                // The token stays in use until it expires; try again later.
                                Err(_) => Some(PROACTIVE_RETRY_PAUSE),
                            }
                        }
                        // Unused or expired: the next request, or the next stored token, decides
                        // what happens.
                        _ => None,
                    }
                }
                None => None,
            }
        };
        match pause {
            Some(pause) => {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// `base` scaled by a random factor in [0.5, 1.5), so that replicas retrying after one outage
/// spread out.
fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    let factor = 0.5 + (random % 1_000) as f64 / 1_000.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            refresh_margin: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(15),
            rejection_cool_down: Duration::from_secs(30),
            auth_attempts: 3,
            background_renewal: true,
            timer_marks_due: true,
        }
    }

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

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half_times() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(200));
            assert!(
                d >= Duration::from_millis(100) && d < Duration::from_millis(300),
                "{d:?}"
            );
        }
    }
}
