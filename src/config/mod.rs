//! Building an [`IqmAuth`]: the builder, its defaults, validation and the environment.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use reqwest::Url;

use crate::IqmAuth;
use crate::account::AccountFingerprint;
use crate::auth_api::AuthApi;
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::fleet::SessionCoordinator;
use crate::limit::{DEFAULT_RATE_LIMIT_WAIT, Rate};
use crate::secret::Secret;
use crate::store::{MemoryTokenStore, NewTokensHook, StoredTokens, TokenStore};

mod env;
mod rate_limit;
mod url;

#[cfg(any(feature = "redis", test))]
pub(crate) use self::url::without_user_info;
use self::url::{RawBaseUrl, parse_base_url};

/// IQM's production API.
const DEFAULT_BASE_URL: &str = "https://api.iqm.com";
/// How long before `expires_in` runs out a token is renewed, unless set otherwise.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long one login, refresh, logout or sign-up call may take.
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one acquisition of a token may take, retries and backoff waits included.
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the layer fails fast after IQM rejected the credentials.
const DEFAULT_REJECTION_COOL_DOWN: Duration = Duration::from_secs(30);
/// The longest the rejection cool-down grows to for rejections in a row.
const DEFAULT_MAX_REJECTION_COOL_DOWN: Duration = Duration::from_secs(15 * 60);
/// How long renewals pause after a 429 without `Retry-After`.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(10);
/// How long an endpoint proven to refuse the user first has its 401s handed back.
const DEFAULT_ENDPOINT_REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// Failed auth calls allowed a minute, and in a row.
const DEFAULT_AUTH_CALL_BUDGET: (u32, u32) = (10, 3);
/// How many times one login or refresh call is tried when it fails transiently.
const DEFAULT_AUTH_ATTEMPTS: u32 = 3;

/// Builds an [`IqmAuth`]. Setters never fail; [`build`](Self::build) checks everything at once.
///
/// ```
/// use std::time::Duration;
///
/// let auth = iqm_auth::IqmAuth::builder()
///     .client_credentials("client-id", "client-secret")
///     .workspace_host("acme.iqm.com")
///     .credentials("ops@acme.com", "password")
///     .refresh_margin(Duration::from_secs(120))
///     .build()?;
/// # let _ = auth;
/// # Ok::<(), iqm_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct IqmAuthBuilder {
    base_url: RawBaseUrl,
    client_id: String,
    client_secret: Secret,
    workspace_host: String,
    email: String,
    password: Secret,
    refresh_margin: Duration,
    auth_timeout: Duration,
    acquire_timeout: Duration,
    rejection_cool_down: Duration,
    max_rejection_cool_down: Duration,
    rate_limit_pause: Duration,
    endpoint_refusal_window: Duration,
    auth_call_budget: (u32, u32),
    auth_attempts: u32,
    backoff_jitter: bool,
    jitter_seed: Option<u64>,
    replay_unauthorized: bool,
    background_renewal: bool,
    /// `None`: the system clock.
    clock: Option<Arc<dyn Clock>>,
    http_client: Option<reqwest::Client>,
    token_store: Option<Arc<dyn TokenStore>>,
    on_new_tokens: Option<NewTokensHook>,
    shared: Option<Arc<dyn SessionCoordinator>>,
    auth_api: Option<Arc<dyn AuthApi>>,
    /// `None`: no pacing.
    request_rate: Option<Rate>,
    rate_limit_wait: Duration,
}

impl Default for IqmAuthBuilder {
    fn default() -> Self {
        Self {
            base_url: RawBaseUrl(DEFAULT_BASE_URL.to_owned()),
            client_id: String::new(),
            client_secret: Secret::new(""),
            workspace_host: String::new(),
            email: String::new(),
            password: Secret::new(""),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            rejection_cool_down: DEFAULT_REJECTION_COOL_DOWN,
            max_rejection_cool_down: DEFAULT_MAX_REJECTION_COOL_DOWN,
            rate_limit_pause: DEFAULT_RATE_LIMIT_PAUSE,
            endpoint_refusal_window: DEFAULT_ENDPOINT_REFUSAL_WINDOW,
            auth_call_budget: DEFAULT_AUTH_CALL_BUDGET,
            auth_attempts: DEFAULT_AUTH_ATTEMPTS,
            backoff_jitter: true,
            jitter_seed: None,
            replay_unauthorized: true,
            background_renewal: true,
            clock: None,
            http_client: None,
            token_store: None,
            on_new_tokens: None,
            shared: None,
            auth_api: None,
            request_rate: None,
            rate_limit_wait: DEFAULT_RATE_LIMIT_WAIT,
        }
    }
}

impl IqmAuthBuilder {
    /// The API's base URL. Requests whose scheme, host and port equal this URL's are
    /// authenticated; all others pass through untouched. Defaults to `https://api.iqm.com`.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = RawBaseUrl(base_url.into());
        self
    }

    /// The client id and client secret IQM support issued, sent as HTTP Basic auth on login and
    /// token calls.
    pub fn client_credentials(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        self.client_id = client_id.into();
        self.client_secret = Secret::new(client_secret);
        self
    }

    /// The workspace host, e.g. `acme.iqm.com`, sent as `X-IAA-HOST` on login.
    pub fn workspace_host(mut self, host: impl Into<String>) -> Self {
        self.workspace_host = host.into();
        self
    }

    /// The user that logs in.
    pub fn credentials(mut self, email: impl Into<String>, password: impl Into<String>) -> Self {
        self.email = email.into();
        self.password = Secret::new(password);
        self
    }

    /// How long before expiry a token is renewed. Never more than a quarter of the token's
    /// lifetime, so short-lived tokens are still reused. Defaults to 60 s.
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The timeout of each call to IQM's auth endpoints (login, refresh, logout, sign-up),
    /// independent of the timeouts of the requests being authenticated. Defaults to 5 s.
    pub fn auth_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = timeout;
        self
    }

    /// The most one acquisition of a token may take, retries and backoff waits included, before
    /// callers get [`AuthError::BudgetExhausted`](crate::AuthError::BudgetExhausted). A hanging
    /// IQM never hangs callers longer. Defaults to 15 s.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long the layer fails fast with the same error after IQM rejected the credentials
    /// (login answered 400, 401, 403 or another non-transient 4xx), so that a wrong password can
    /// neither lock the account nor burn IQM's rate limit. It doubles for each rejection in a
    /// row, up to [`max_rejection_cool_down`](Self::max_rejection_cool_down), and a successful
    /// renewal resets it. Defaults to 30 s.
    pub fn rejection_cool_down(mut self, cool_down: Duration) -> Self {
        self.rejection_cool_down = cool_down;
        self
    }

    /// The longest the rejection cool-down grows to for rejections in a row. Defaults to 15 min:
    /// a wrong password costs at most 8 login calls in its first hour, 4 an hour after that.
    pub fn max_rejection_cool_down(mut self, max: Duration) -> Self {
        self.max_rejection_cool_down = max;
        self
    }

    /// How long IQM's window stays closed after it answers `429 Too Many Requests` without a
    /// `Retry-After` (with one, IQM's time is waited out): no request, API or auth call, is sent
    /// meanwhile, and renewals pause. Defaults to 10 s.
    pub fn rate_limit_pause(mut self, pause: Duration) -> Self {
        self.rate_limit_pause = pause;
        self
    }

    /// How long the 401s of an endpoint that refuses the user are handed back without a
    /// renewal. An endpoint (a path) that answers 401 to a token and then to one obtained after
    /// that 401 (typically the replay's renewed token) refuses the user (a workspace or
    /// resource it may not access), not the token: renewing for each of its 401s would spend
    /// IQM's rate limit one call per request. The window doubles each time the endpoint proves
    /// it again, up to 10 min; once it is over, an answer other than 401 from the endpoint
    /// forgets it. A 401 from any other endpoint is a revocation and is recovered at once.
    /// Defaults to 10 s.
    pub fn endpoint_refusal_window(mut self, window: Duration) -> Self {
        self.endpoint_refusal_window = window;
        self
    }

    /// The budget for failed auth calls: every login or refresh call the layer sends that does
    /// not yield a usable token (connect error, timeout, 5xx, 429, refusal, unusable answer)
    /// takes one; at most `per_minute` in any minute and `burst` in a row. While it is spent no
    /// auth call is sent, and callers get [`AuthError::CallBudgetExhausted`] at once, saying when
    /// the next call is allowed. Successful calls take nothing. Both are at least 1. Defaults to
    /// 10 a minute with a burst of 3, half of IQM's limit of about 20 requests a minute.
    ///
    /// [`AuthError::CallBudgetExhausted`]: crate::AuthError::CallBudgetExhausted
    pub fn auth_call_budget(mut self, per_minute: u32, burst: u32) -> Self {
        self.auth_call_budget = (per_minute, burst);
        self
    }

    /// How many times a login or refresh call is tried when it fails transiently (connect
    /// error, reset, timeout, 5xx, 408, 429), the first try included; at least 1. Defaults to 3.
    pub fn auth_attempts(mut self, attempts: u32) -> Self {
        self.auth_attempts = attempts;
        self
    }

    /// Whether the backoff between tries of an auth call is spread by a random factor between
    /// 0.5 and 1.5, so that replicas retrying after one outage do not all call at once. Switch
    /// it off in tests for exact waits (200 ms, then 400 ms, …). Defaults to on.
    pub fn backoff_jitter(mut self, jitter: bool) -> Self {
        self.backoff_jitter = jitter;
        self
    }

    /// Seeds the randomness of the jitter (the spread of retry backoffs, and of the renewal
    /// margins of replicas sharing a session), so that a run can be reproduced exactly: a
    /// simulation, a test. Defaults to a seed from the OS.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Whether a request that IQM answers with 401 is replayed once with a renewed token.
    /// Switching it off saves the copy of each request kept for the replay; a 401 then still
    /// renews the token for the next request, and is handed back as it is. Defaults to on.
    pub fn replay_unauthorized(mut self, replay: bool) -> Self {
        self.replay_unauthorized = replay;
        self
    }

    /// Whether a background task renews a token that is in use before it expires, so that no
    /// request waits for a renewal in steady state. Without it a request that finds the token
    /// close to expiry starts the renewal, and one that finds it expired waits for it. Defaults
    /// to on.
    pub fn background_renewal(mut self, enabled: bool) -> Self {
        self.background_renewal = enabled;
        self
    }

    /// The clock deadlines are computed with. Defaults to the system's monotonic clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The `reqwest::Client` used for the auth calls themselves (proxy, TLS roots). It should not
    /// follow redirects: the default one does not. Not the client requests go through.
    pub fn auth_http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Where the session is kept across restarts. See [`TokenStore`] for when it is read and
    /// written. Defaults to a [`MemoryTokenStore`] of its own.
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.token_store = Some(store);
        self
    }

    /// Called with every new token set obtained from IQM (after it is saved to the token
    /// store), for keeping tokens somewhere of your own. Requests do not wait for it (they get
    /// the new token first), but the next renewal does: keep it quick.
    pub fn on_new_tokens(mut self, hook: impl Fn(&StoredTokens) + Send + Sync + 'static) -> Self {
        self.on_new_tokens = Some(NewTokensHook(Arc::new(hook)));
        self
    }

    /// Shares one IQM session with every other replica given the same coordinator: a
    /// [`RedisSession`](crate::RedisSession) across processes (feature `redis`), or a
    /// [`MemoryCoordinator`](crate::MemoryCoordinator) within one. Replicas then log in once
    /// between them, renew once per token lifetime, and recover from a revocation with one
    /// renewal. Defaults to none: each `IqmAuth` keeps its own session.
    pub fn shared_session(mut self, coordinator: impl SessionCoordinator) -> Self {
        self.shared = Some(Arc::new(coordinator));
        self
    }

    /// Where the layer's auth calls go: IQM's auth endpoints over HTTP unless set (see
    /// [`AuthApi`]). With one set, [`auth_http_client`](Self::auth_http_client) is not used;
    /// the credentials are still required, and the email and password are what the layer logs
    /// in with.
    pub fn auth_api(mut self, api: impl AuthApi) -> Self {
        self.auth_api = Some(Arc::new(api));
        self
    }

    /// Checks the settings and builds the middleware. Sends nothing.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting that is missing, blank or malformed.
    pub fn build(self) -> Result<IqmAuth, ConfigError> {
        let base = parse_base_url(&self.base_url.0)?;
        require("client id", self.client_id.trim().is_empty())?;
        require("client secret", self.client_secret.is_blank())?;
        require("workspace host", self.workspace_host.trim().is_empty())?;
        require("email", self.email.trim().is_empty())?;
        require("password", self.password.is_blank())?;
        let workspace_host = HeaderValue::from_str(self.workspace_host.trim())
            .map_err(|_| ConfigError::InvalidWorkspaceHost(self.workspace_host.clone()))?;
        let http = match self.http_client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ConfigError::HttpClient(e.to_string()))?,
        };
        let account = AccountFingerprint::of(
            &base,
            &self.client_id,
            &self.client_secret,
            workspace_host.as_bytes(),
            &self.email,
        );
        // Each account's shared session lives under its fingerprint: a namespace only groups,
        // so accounts given one namespace never share a set.
        let shared = self.shared.map(|coordinator| {
            let scope = match coordinator.namespace() {
                Some(namespace) => format!("{namespace}.{}", account.as_str()),
                None => account.as_str().to_owned(),
            };
            (coordinator, scope)
        });
        IqmAuth::new(Config {
            account,
            base,
            client_id: self.client_id,
            client_secret: self.client_secret,
            workspace_host,
            email: self.email,
            password: self.password,
            refresh_margin: self.refresh_margin,
            auth_timeout: self.auth_timeout,
            acquire_timeout: self.acquire_timeout,
            rejection_cool_down: self.rejection_cool_down,
            max_rejection_cool_down: self.max_rejection_cool_down,
            rate_limit_pause: self.rate_limit_pause,
            endpoint_refusal_window: self.endpoint_refusal_window,
            auth_call_budget: self.auth_call_budget,
            auth_attempts: self.auth_attempts.max(1),
            backoff_jitter: self.backoff_jitter,
            jitter_seed: self.jitter_seed,
            replay_unauthorized: self.replay_unauthorized,
            background_renewal: self.background_renewal,
            // With the system clock, the background renewer's timer (which runs on the same
            // time) can tell the hot path when a token is due, sparing it a clock read.
            timer_marks_due: self.background_renewal && self.clock.is_none(),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            token_store: self
                .token_store
                .unwrap_or_else(|| Arc::new(MemoryTokenStore::default())),
            on_new_tokens: self.on_new_tokens,
            shared,
            auth_api: self.auth_api,
            request_rate: self.request_rate,
            rate_limit_wait: self.rate_limit_wait,
            http,
        })
    }
}

fn require(what: &'static str, blank: bool) -> Result<(), ConfigError> {
    if blank {
        Err(ConfigError::Missing(what))
    } else {
        Ok(())
    }
}

/// Settings after validation.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) account: AccountFingerprint,
    pub(crate) base: Url,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) workspace_host: HeaderValue,
    pub(crate) email: String,
    pub(crate) password: Secret,
    pub(crate) refresh_margin: Duration,
    pub(crate) auth_timeout: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) rejection_cool_down: Duration,
    pub(crate) max_rejection_cool_down: Duration,
    pub(crate) rate_limit_pause: Duration,
    pub(crate) endpoint_refusal_window: Duration,
    pub(crate) auth_call_budget: (u32, u32),
    pub(crate) auth_attempts: u32,
    pub(crate) backoff_jitter: bool,
    pub(crate) jitter_seed: Option<u64>,
    pub(crate) replay_unauthorized: bool,
    pub(crate) background_renewal: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) timer_marks_due: bool,
    pub(crate) token_store: Arc<dyn TokenStore>,
    pub(crate) on_new_tokens: Option<NewTokensHook>,
    /// The shared session's coordinator and the scope this account's session lives under.
    pub(crate) shared: Option<(Arc<dyn SessionCoordinator>, String)>,
    /// The auth calls' destination when not IQM's HTTP endpoints.
    pub(crate) auth_api: Option<Arc<dyn AuthApi>>,
    /// The pace of IQM requests, if any.
    pub(crate) request_rate: Option<Rate>,
    /// How long a request may wait for IQM's rate limit.
    pub(crate) rate_limit_wait: Duration,
    pub(crate) http: reqwest::Client,
}

#[cfg(test)]
mod tests;
