//! Counters of what the layer did, read as a cheap snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::{AuthError, FailureClass};

/// Why a token was obtained or renewed: the `reason` of the `iqm_auth.renew` span and of the
/// renewal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RenewReason {
    /// No token was cached yet (first use, or after [`logout`](crate::IqmAuth::logout)).
    FirstUse,
    /// The token was close to expiry and still valid: renewed ahead of time.
    Proactive,
    /// The token had expired: the request waited for a new one.
    Expired,
    /// IQM answered a request with 401.
    Unauthorized,
    /// [`IqmAuth::renew`](crate::IqmAuth::renew) was called.
    Forced,
}

impl RenewReason {
    /// A short label for metrics: `first_use`, `proactive`, `expired`, `unauthorized` or
    /// `forced`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::FirstUse => "first_use",
            Self::Proactive => "proactive",
            Self::Expired => "expired",
            Self::Unauthorized => "unauthorized",
            Self::Forced => "forced",
        }
    }
}

impl fmt::Display for RenewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FirstUse => "first use",
            Self::Proactive => "proactive",
            Self::Expired => "expired",
            Self::Unauthorized => "unauthorized",
            Self::Forced => "forced",
        })
    }
}

/// A snapshot of the layer's counters since it was built, and of its state now: enough for a
/// health endpoint to report without a network call. See [`IqmAuth::stats`](crate::IqmAuth::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// How long the cached access token still lives (zero once it has expired); `None` when no
    /// token is cached (before the first login, after a logout).
    pub token_expires_in: Option<Duration>,
    /// The class of the error of the latest renewal, if it failed; `None` once a renewal
    /// succeeds.
    pub last_renewal_error: Option<FailureClass>,
    /// Login calls sent (password grant), failed ones included.
    pub logins: u64,
    /// Refresh-token calls sent, failed ones included.
    pub refreshes: u64,
    /// Renewals started because no token was cached.
    pub renewals_first_use: u64,
    /// Renewals started ahead of expiry.
    pub renewals_proactive: u64,
    /// Renewals started because the token had expired.
    pub renewals_expired: u64,
    /// Renewals started because IQM answered 401.
    pub renewals_unauthorized: u64,
    /// Renewals started by [`IqmAuth::renew`](crate::IqmAuth::renew).
    pub renewals_forced: u64,
    /// Requests replayed after a 401.
    pub unauthorized_replays: u64,
    /// Callers that waited on a renewal another caller had started, instead of starting one.
    pub shared_waits: u64,
    /// Renewals that ended in an error.
    pub failed_renewals: u64,
    /// Failed renewals whose last error was transient (connect, timeout, 5xx, 408, 429).
    pub failures_transient: u64,
    /// Failed renewals IQM refused (4xx, `"success": false`).
    pub failures_rejected: u64,
    /// Failed renewals whose answer was unusable (not JSON, missing fields, bad token bytes).
    pub failures_invalid_response: u64,
    /// Token store loads, saves or clears that failed, and stored sessions that were unusable.
    pub store_errors: u64,
    /// Panics caught in code of the user's that the layer calls (a [`TokenStore`] or the
    /// `on_new_tokens` hook): logged and counted, never retried as an auth call.
    ///
    /// [`TokenStore`]: crate::TokenStore
    pub user_code_panics: u64,
    /// 401s handed back without a renewal because they are not the token's fault: from an
    /// endpoint that refused a renewed token too (it refuses the user), or from another origin
    /// than IQM's (a redirect followed away from it).
    pub unauthorized_not_renewed: u64,
    /// Token sets taken from the fleet's shared session, renewed by another replica.
    pub shared_adoptions: u64,
    /// Calls to the fleet's shared session (Redis) that failed or timed out. A renewal tries
    /// again while it waits; see [`renewed_alone`](Self::renewed_alone).
    pub shared_errors: u64,
    /// Renewals this replica made on its own because the fleet's shared session stayed out of
    /// reach (or holds a set sealed under a key it does not hold).
    pub renewed_alone: u64,
    /// Times the shared session held something this replica could not read (a foreign
    /// format, or a set encrypted under another key).
    pub shared_unreadable: u64,
    /// Times the token store held a session of another account (another base URL, client id,
    /// workspace host or user), or one saved without its account: ignored, never sent.
    pub foreign_sessions_ignored: u64,
    /// Logout calls sent.
    pub logouts: u64,
    /// Sign-up calls sent.
    pub sign_ups: u64,
    /// How long IQM's 429 window stays closed (no request is sent before then); `None` while
    /// it is open.
    pub rate_limited_for: Option<Duration>,
    /// Answers `429 Too Many Requests` from IQM, to API requests and auth calls.
    pub rate_limited: u64,
    /// Requests (API requests and auth calls) that waited before they were sent: for their
    /// turn in the request rate, or for IQM's 429 window to open.
    pub requests_paced: u64,
    /// The time those requests waited, in all.
    pub pacing_wait_total: Duration,
    /// The longest any of them waited.
    pub pacing_wait_max: Duration,
    /// Requests refused unsent with [`AuthError::RateLimited`]: they could not wait for IQM's
    /// window or their turn.
    pub requests_refused: u64,
    /// Requests waiting now for IQM's window to open or for their turn.
    pub requests_waiting: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    logins: AtomicU64,
    refreshes: AtomicU64,
    renewals: [AtomicU64; 5],
    unauthorized_replays: AtomicU64,
    shared_waits: AtomicU64,
    failed_renewals: AtomicU64,
    /// Indexed by [`FailureClass`]; interrupted renewals are counted in `failed_renewals` only.
    failures: [AtomicU64; 3],
    /// The latest renewal's failure class as `1 + slot` of [`CLASSES`], 0 after a success.
    last_failure: AtomicU8,
    store_errors: AtomicU64,
    user_code_panics: AtomicU64,
    unauthorized_not_renewed: AtomicU64,
    logouts: AtomicU64,
    sign_ups: AtomicU64,
    shared_adoptions: AtomicU64,
    shared_errors: AtomicU64,
    renewed_alone: AtomicU64,
    shared_unreadable: AtomicU64,
    foreign_sessions_ignored: AtomicU64,
    rate_limited: AtomicU64,
    requests_paced: AtomicU64,
    /// In nanoseconds.
    pacing_wait_total: AtomicU64,
    /// In nanoseconds.
    pacing_wait_max: AtomicU64,
    requests_refused: AtomicU64,
    requests_waiting: AtomicU64,
}

/// Every failure class, in the order `last_failure` numbers them.
const CLASSES: [FailureClass; 5] = [
    FailureClass::Transient,
    FailureClass::Rejected,
    FailureClass::InvalidResponse,
    FailureClass::Interrupted,
    FailureClass::Throttled,
];

/// The slot of `class` in [`Counters::failures`].
fn failure_slot(class: FailureClass) -> Option<usize> {
    match class {
        FailureClass::Transient => Some(0),
        FailureClass::Rejected => Some(1),
        FailureClass::InvalidResponse => Some(2),
        FailureClass::Interrupted | FailureClass::Throttled => None,
    }
}

impl Counters {
    pub(crate) fn login(&self) {
        self.logins.fetch_add(1, Relaxed);
        publish::count("iqm_auth_logins_total", None);
    }
    pub(crate) fn refresh(&self) {
        self.refreshes.fetch_add(1, Relaxed);
        publish::count("iqm_auth_refreshes_total", None);
    }
    pub(crate) fn renewal(&self, reason: RenewReason) {
        self.renewals[reason as usize].fetch_add(1, Relaxed);
        publish::count("iqm_auth_renewals_total", Some(("reason", reason.label())));
    }
    pub(crate) fn replay(&self) {
        self.unauthorized_replays.fetch_add(1, Relaxed);
        publish::count("iqm_auth_unauthorized_replays_total", None);
    }
    pub(crate) fn shared_wait(&self) {
        self.shared_waits.fetch_add(1, Relaxed);
        publish::count("iqm_auth_shared_waits_total", None);
    }
    pub(crate) fn failed_renewal(&self, err: &AuthError) {
        let class = err.class();
        self.failed_renewals.fetch_add(1, Relaxed);
        publish::count(
            "iqm_auth_failed_renewals_total",
            Some(("class", class.label())),
        );
        if let Some(slot) = failure_slot(class) {
            self.failures[slot].fetch_add(1, Relaxed);
        }
        let number = CLASSES
            .iter()
            .position(|c| *c == class)
            .map_or(0, |i| i + 1);
        self.last_failure
            .store(u8::try_from(number).unwrap_or(0), Relaxed);
    }

    pub(crate) fn renewal_succeeded(&self) {
        self.last_failure.store(0, Relaxed);
    }

    pub(crate) fn user_code_panic(&self) {
        self.user_code_panics.fetch_add(1, Relaxed);
        publish::count("iqm_auth_user_code_panics_total", None);
    }

    pub(crate) fn unauthorized_not_renewed(&self) {
        self.unauthorized_not_renewed.fetch_add(1, Relaxed);
        publish::count("iqm_auth_unauthorized_not_renewed_total", None);
    }

    pub(crate) fn shared_adoption(&self) {
        self.shared_adoptions.fetch_add(1, Relaxed);
        publish::count("iqm_auth_shared_adoptions_total", None);
    }

    pub(crate) fn shared_error(&self) {
        self.shared_errors.fetch_add(1, Relaxed);
        publish::count("iqm_auth_shared_errors_total", None);
    }

    pub(crate) fn renewed_alone(&self) {
        self.renewed_alone.fetch_add(1, Relaxed);
        publish::count("iqm_auth_renewed_alone_total", None);
    }

    pub(crate) fn shared_unreadable(&self) {
        self.shared_unreadable.fetch_add(1, Relaxed);
        publish::count("iqm_auth_shared_unreadable_total", None);
    }

    pub(crate) fn foreign_session_ignored(&self) {
        self.foreign_sessions_ignored.fetch_add(1, Relaxed);
        publish::count("iqm_auth_foreign_sessions_ignored_total", None);
    }

    pub(crate) fn logout(&self) {
        self.logouts.fetch_add(1, Relaxed);
        publish::count("iqm_auth_logouts_total", None);
    }

    pub(crate) fn sign_up(&self) {
        self.sign_ups.fetch_add(1, Relaxed);
        publish::count("iqm_auth_sign_ups_total", None);
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
        publish::count("iqm_auth_rate_limited_total", None);
    }

    pub(crate) fn paced(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.requests_paced.fetch_add(1, Relaxed);
        self.pacing_wait_total.fetch_add(nanos, Relaxed);
        self.pacing_wait_max.fetch_max(nanos, Relaxed);
        publish::count("iqm_auth_requests_paced_total", None);
        publish::seconds("iqm_auth_pacing_wait_seconds", waited);
    }

    /// Counts a request waiting for IQM's rate limit until the guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.requests_waiting.fetch_add(1, Relaxed);
        Waiting(&self.requests_waiting)
    }

    pub(crate) fn refused(&self) {
        self.requests_refused.fetch_add(1, Relaxed);
        publish::count("iqm_auth_requests_refused_total", None);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
        publish::count("iqm_auth_store_errors_total", None);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let renewals = |reason: RenewReason| self.renewals[reason as usize].load(Relaxed);
        let failures =
            |class| failure_slot(class).map_or(0, |slot| self.failures[slot].load(Relaxed));
        let last_failure = usize::from(self.last_failure.load(Relaxed));
        Stats {
            token_expires_in: None,
            last_renewal_error: last_failure
                .checked_sub(1)
                .and_then(|i| CLASSES.get(i).copied()),
            logins: self.logins.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            renewals_first_use: renewals(RenewReason::FirstUse),
            renewals_proactive: renewals(RenewReason::Proactive),
            renewals_expired: renewals(RenewReason::Expired),
            renewals_unauthorized: renewals(RenewReason::Unauthorized),
            renewals_forced: renewals(RenewReason::Forced),
            unauthorized_replays: self.unauthorized_replays.load(Relaxed),
            shared_waits: self.shared_waits.load(Relaxed),
            failed_renewals: self.failed_renewals.load(Relaxed),
            failures_transient: failures(FailureClass::Transient),
            failures_rejected: failures(FailureClass::Rejected),
            failures_invalid_response: failures(FailureClass::InvalidResponse),
            store_errors: self.store_errors.load(Relaxed),
            user_code_panics: self.user_code_panics.load(Relaxed),
            unauthorized_not_renewed: self.unauthorized_not_renewed.load(Relaxed),
            shared_adoptions: self.shared_adoptions.load(Relaxed),
            shared_errors: self.shared_errors.load(Relaxed),
            renewed_alone: self.renewed_alone.load(Relaxed),
            shared_unreadable: self.shared_unreadable.load(Relaxed),
            foreign_sessions_ignored: self.foreign_sessions_ignored.load(Relaxed),
            logouts: self.logouts.load(Relaxed),
            sign_ups: self.sign_ups.load(Relaxed),
            rate_limited_for: None,
            rate_limited: self.rate_limited.load(Relaxed),
            requests_paced: self.requests_paced.load(Relaxed),
            pacing_wait_total: Duration::from_nanos(self.pacing_wait_total.load(Relaxed)),
            pacing_wait_max: Duration::from_nanos(self.pacing_wait_max.load(Relaxed)),
            requests_refused: self.requests_refused.load(Relaxed),
            requests_waiting: self.requests_waiting.load(Relaxed),
        }
    }
}

/// A request counted in [`Stats::requests_waiting`] while it lives.
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The `metrics` crate facade, with the `metrics` feature; nothing without it.
mod publish {
    #[cfg(feature = "metrics")]
    pub(super) fn count(name: &'static str, label: Option<(&'static str, &'static str)>) {
        match label {
            Some((key, value)) => metrics::counter!(name, key => value).increment(1),
            None => metrics::counter!(name).increment(1),
        }
    }

    #[cfg(not(feature = "metrics"))]
    pub(super) fn count(_name: &'static str, _label: Option<(&'static str, &'static str)>) {}

    #[cfg(feature = "metrics")]
    pub(super) fn seconds(name: &'static str, value: std::time::Duration) {
        metrics::histogram!(name).record(value.as_secs_f64());
    }

    #[cfg(not(feature = "metrics"))]
    pub(super) fn seconds(_name: &'static str, _value: std::time::Duration) {}
}
