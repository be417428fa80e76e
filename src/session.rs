//! The shared token cache: a lock-free read on the hot path, one place where tokens are
//! obtained (single flight), generation-checked renewal, and the background renewer.
//!
//! Invariants:
//! - `current` only ever holds a complete [`CachedToken`]; it is replaced whole.
//! - At most one renewal ("flight") runs at a time. It runs in a task of its own, so a caller
//!   that gives up (drops its future) never cancels it for the others, and a rotated refresh
//!   token is always stored together with the access token it came with.
//! - A caller asks for a renewal naming the generation it found wanting; if the cache holds a
//!   different generation by the time it asks, that token is returned instead. So any number of
//!   concurrent callers that saw the same stale token cause one renewal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, info_span, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{AuthError, ConfigError};
use crate::iqm_api::IqmApi;
use crate::secret::Secret;
use crate::stats::{Counters, RenewReason, Stats};
use crate::token::{CachedToken, Deadlines, Freshness, TokenSet};

/// How long the background renewer waits before it tries again after a failed early renewal
/// (the token it holds is still valid meanwhile).
const PROACTIVE_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How many times a caller starts a renewal again when the one it waited on was interrupted
/// before it answered (its task aborted, e.g. by a runtime shutting down).
const INTERRUPTED_FLIGHT_RETRIES: usize = 2;

type Answer = Option<Result<Arc<CachedToken>, AuthError>>;

pub(crate) struct Session {
    api: IqmApi,
    email: String,
    password: Secret,
    clock: Arc<dyn Clock>,
    refresh_margin: Duration,
    background_renewal: bool,
    current: ArcSwapOption<CachedToken>,
    flights: Mutex<Flights>,
    next_generation: AtomicU64,
    renewer: Mutex<Option<AbortHandle>>,
    renewer_wake: Arc<Notify>,
    pub(crate) counters: Counters,
}

#[derive(Default)]
struct Flights {
    running: Option<Flight>,
    next_id: u64,
}

struct Flight {
    id: u64,
    answer: watch::Receiver<Answer>,
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
            refresh_margin: config.refresh_margin,
            background_renewal: config.background_renewal,
            current: ArcSwapOption::empty(),
            flights: Mutex::new(Flights::default()),
            next_generation: AtomicU64::new(1),
            renewer: Mutex::new(None),
            renewer_wake: Arc::new(Notify::new()),
            counters: Counters::default(),
        })
    }

    /// The hot path: a cached token that may be used now, if there is one. Takes no lock. A
    /// token close to expiry is still returned, and a renewal is started in the background.
    pub(crate) fn usable_now<R>(
        self: &Arc<Self>,
        with: impl FnOnce(&CachedToken) -> R,
    ) -> Option<R> {
        let guard = self.current.load();
        let token = guard.as_deref()?;
        match token.deadlines.freshness(self.clock.now()) {
            Freshness::Fresh => {}
            Freshness::RenewSoon => {
                // Only the first request to see the token in this state pays for starting the
                // renewal; the background renewer retries it if it fails.
                if token.claim_early_renewal() {
                    self.renew_in_background(token.generation);
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
            let mut answer = match self.join_or_start(reason, stale, true) {
                Some(Joined::Cached(token)) => return Ok(token),
                Some(Joined::Waiting(answer)) => answer,
                Some(Joined::Drive(flight, answer)) => {
                    flight.await;
                    answer
                }
                None => break,
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

    /// Starts an early renewal that nobody waits for, unless one is running, the token was
    /// replaced, or there is no runtime to run it on (then the request that finds the token
    /// expired renews it).
    fn renew_in_background(self: &Arc<Self>, stale: u64) {
        drop(self.join_or_start(RenewReason::Proactive, Some(stale), false));
    }

    /// Joins the running renewal, returns a token newer than `stale`, or starts a renewal. A
    /// renewal that cannot be spawned is handed to the caller to drive if `can_drive`, and not
    /// started otherwise (`None`).
    fn join_or_start(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
        can_drive: bool,
    ) -> Option<Joined> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut flights = self.flights.lock();
        if let Some(flight) = &flights.running {
            self.counters.shared_wait();
            return Some(Joined::Waiting(flight.answer.clone()));
        }
        if let Some(token) = self.current.load_full() {
            if Some(token.generation) != stale {
                return Some(Joined::Cached(token));
            }
        }
        if runtime.is_none() && !can_drive {
            return None;
        }
        let id = flights.next_id;
        flights.next_id += 1;
        let (sender, answer) = watch::channel(None);
        flights.running = Some(Flight {
            id,
            answer: answer.clone(),
        });
        drop(flights);
        self.counters.renewal(reason);
        // The guard exists before the future is first polled, so even a renewal dropped unpolled
        // frees the slot.
        let release = ReleaseFlight {
            session: Arc::clone(self),
            id,
        };
        let flight = fly(release, reason, sender).instrument(info_span!("iqm_auth.renew", %reason));
        Some(match runtime {
            Some(runtime) => {
                runtime.spawn(flight);
                Joined::Waiting(answer)
            }
            None => Joined::Drive(Box::pin(flight), answer),
        })
    }

    /// The one place where tokens are obtained from IQM: the refresh-token grant when a refresh
    /// token is cached, and a password login when there is none or the refresh fails.
    async fn obtain(&self, reason: RenewReason) -> Result<Arc<CachedToken>, AuthError> {
        let previous = self.current.load_full();
        if let Some(previous) = previous.as_deref() {
            if let Some(refresh_token) = &previous.refresh_token {
                let issued = self.clock.now();
                self.counters.refresh();
                match self.api.refresh(refresh_token).await {
                    Ok(set) => {
                        debug!(%reason, "refreshed the IQM token");
                        return self.cache(set, issued, Some(previous));
                    }
                    Err(err) => {
                        warn!(error = %err, "IQM refused the token refresh; logging in again");
                    }
                }
            }
        }
        let issued = self.clock.now();
        self.counters.login();
        let set = self.api.login(&self.email, &self.password).await?;
        debug!(%reason, "logged in to IQM");
        self.cache(set, issued, None)
    }

    /// Builds the cached form of a token set. `refreshed_from` is the token a refresh answer
    /// renews: its `owId` is kept, and so is its refresh token unless IQM rotated it.
    fn cache(
        &self,
        set: TokenSet,
        issued: std::time::Instant,
        refreshed_from: Option<&CachedToken>,
    ) -> Result<Arc<CachedToken>, AuthError> {
        let endpoint = if refreshed_from.is_some() {
            crate::AuthEndpoint::Refresh
        } else {
            crate::AuthEndpoint::Login
        };
        let ow_id = set
            .ow_id
            .or(refreshed_from.map(|t| t.ow_id))
            .ok_or_else(|| {
                AuthError::invalid(endpoint, http::StatusCode::OK, "the answer has no owId")
            })?;
        let refresh_token = set
            .refresh_token
            .or_else(|| refreshed_from.and_then(|t| t.refresh_token.clone()));
        let deadlines = Deadlines::compute(issued, set.expires_in, self.refresh_margin);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        CachedToken::new(
            generation,
            set.access_token,
            refresh_token,
            ow_id,
            deadlines,
        )
        .map(Arc::new)
        .map_err(|problem| AuthError::invalid(endpoint, http::StatusCode::OK, problem))
    }

    /// Forgets the cached token and invalidates it at IQM.
    pub(crate) async fn logout(&self) -> Result<(), AuthError> {
        let token = {
            let _flights = self.flights.lock();
            self.current.swap(None)
        };
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
        if !self.background_renewal {
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
            .field("refresh_margin", &self.refresh_margin)
            .field("background_renewal", &self.background_renewal)
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
    /// No runtime to spawn on: the caller drives the renewal itself.
    Drive(
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        watch::Receiver<Answer>,
    ),
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
    let result = session.obtain(reason).await;
    {
        let mut flights = session.flights.lock();
        if let Ok(token) = &result {
            session.current.store(Some(Arc::clone(token)));
        }
        release.free(&mut flights);
    }
    match &result {
        Ok(token) => {
            debug!(generation = token.generation, "stored a new IQM token");
            session.ensure_renewer();
            session.renewer_wake.notify_one();
        }
        Err(err) => {
            session.counters.failed_renewal();
            warn!(error = %err, "IQM token renewal failed");
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
                    match token.deadlines.freshness(now) {
                        Freshness::Fresh => Some(token.deadlines.renew_at - now),
                        Freshness::RenewSoon if token.was_used() => {
                            match session
                                .renew(RenewReason::Proactive, Some(token.generation))
                                .await
                            {
                                Ok(_) => continue,
                                Err(_) => Some(PROACTIVE_RETRY_PAUSE),
                            }
                        }
                        // Unused, expired, or already being renewed: the next request, or the
                        // next stored token, decides what happens.
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
