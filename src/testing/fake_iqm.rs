//! A fake IQM on loopback, built on axum: login, the refresh grant (rotating refresh tokens),
//! logout, sign-up and a protected API, with counters and fault knobs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::IqmAuth;
use crate::clock::{Clock, SystemClock};
use crate::config::IqmAuthBuilder;

/// The client id the fake accepts.
pub const CLIENT_ID: &str = "fake-client-id";
/// The client secret the fake accepts.
pub const CLIENT_SECRET: &str = "fake-client-secret";
/// The workspace host the fake accepts in `X-IAA-HOST`.
pub const WORKSPACE_HOST: &str = "acme.iqm.com";
/// The user the fake knows.
pub const EMAIL: &str = "ops@acme.example";
/// That user's password.
pub const PASSWORD: &str = "Correct-Horse-1!";
/// The workspace id the fake's login answers with.
pub const OW_ID: u64 = 200_001;

const USER_NOT_ALLOWED: &str = "User doesn't exist or user is not allowed to provided workspace.";

/// How the fake answers a login or refresh call that it would otherwise accept.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum Answer {
    /// A correct token answer.
    #[default]
    Normal,
    /// A failure with this status and an IQM error envelope.
    Status(u16),
    /// A failure with this status, an IQM error envelope and `Retry-After: <seconds>`.
    StatusRetryAfter(u16, u64),
    /// Status 200 with JSON cut off half-way.
    TruncatedJson,
    /// Status 200 with an HTML page.
    Html,
    /// Status 200 with an IQM error envelope (`"success": false`).
    ErrorEnvelope,
    /// Status 200, a token answer without `access_token`.
    MissingAccessToken,
    /// Status 200, a token answer whose access token is empty.
    EmptyAccessToken,
    /// Status 200, a token answer whose access token contains CR LF and a header.
    HeaderInjection,
    /// Status 200, a login answer without `owId`.
    MissingOwId,
    /// Status 200 and this body, as is.
    Raw(String),
    /// An HTML page of `size` bytes with this status, and `Retry-After: <seconds>` if given: a
    /// proxy's error page, say.
    Page {
        /// The HTTP status.
        status: u16,
        /// The size of the body in bytes.
        size: usize,
        /// The `Retry-After` seconds, if any.
        retry_after: Option<u64>,
    },
    /// Status 200, half a token answer, then the connection is cut.
    ResetMidBody,
}

/// What the fake saw of one request to its protected API (never the secrets themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenRequest {
    /// The HTTP method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Whether an `Authorization` header was present.
    pub has_authorization: bool,
    /// Whether it carried a bearer token the fake issued and has not revoked or expired.
    pub valid_bearer: bool,
    /// Every `X-IAA-OW-ID` value, in order.
    pub ow_ids: Vec<String>,
}

#[derive(Debug)]
struct Knobs {
    token_lifetime: Duration,
    expires_in: Option<Value>,
    login_delay: Duration,
    refresh_delay: Duration,
    login_answer: Answer,
    refresh_answer: Answer,
    login_queue: VecDeque<Answer>,
    refresh_queue: VecDeque<Answer>,
    rotate_refresh_tokens: bool,
    redirects: HashMap<String, String>,
    api_queue: VecDeque<u16>,
    rate_limit: Option<u32>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(3600),
            expires_in: None,
            login_delay: Duration::ZERO,
            refresh_delay: Duration::ZERO,
            login_answer: Answer::Normal,
            refresh_answer: Answer::Normal,
            login_queue: VecDeque::new(),
            refresh_queue: VecDeque::new(),
            rotate_refresh_tokens: true,
            redirects: HashMap::new(),
            api_queue: VecDeque::new(),
            rate_limit: None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    logins: AtomicU64,
    refreshes: AtomicU64,
    logouts: AtomicU64,
    sign_ups: AtomicU64,
    api_calls: AtomicU64,
    unauthorized: AtomicU64,
    rate_limited: AtomicU64,
    refresh_reuses: AtomicU64,
    /// Login and refresh calls answered with a usable token set.
    good_auth_answers: AtomicU64,
}

#[derive(Debug, Default)]
struct Tokens {
    /// Live access tokens and when they expire on the fake's clock.
    access: HashMap<String, Instant>,
    refresh: HashSet<String>,
    /// Refresh tokens rotated away: presenting one again is a reuse.
    spent_refresh: HashSet<String>,
    next: u64,
}

#[derive(Debug)]
struct Shared {
    clock: Arc<dyn Clock>,
    knobs: Mutex<Knobs>,
    counters: Counters,
    tokens: Mutex<Tokens>,
    invited: Mutex<HashSet<String>>,
    seen: Mutex<Vec<SeenRequest>>,
    /// When the calls admitted within the last minute arrived, for the rate limit.
    admitted: Mutex<VecDeque<Instant>>,
}

/// The shape of a token answer: each endpoint answers its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"success": true, "data": {…, "owId"}}`
    Login,
    /// A bare OAuth answer, no envelope and no `owId`.
    Refresh,
    /// `{"success": true, "data": {…}}` without `owId`.
    SignUp,
}

/// A fake IQM server on `127.0.0.1`, stopped when dropped.
///
/// It checks what real IQM checks: Basic client credentials on login, refresh and sign-up,
/// `X-IAA-HOST` and the user's password on login, a live bearer token and an `X-IAA-OW-ID` on
/// every other path (its "protected API", which answers 200 with the path and workspace it
/// saw). Its counters count every call received, failed ones included.
pub struct FakeIqm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The clock given to [`FakeIqm::start_with_clock`], handed on by `auth_builder`.
    clock: Option<Arc<dyn Clock>>,
    server: JoinHandle<()>,
}

impl fmt::Debug for FakeIqm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIqm")
            .field("addr", &self.addr)
            .field("clock", &self.shared.clock)
            .finish_non_exhaustive()
    }
}

impl FakeIqm {
    /// Starts the fake on a free loopback port. Its tokens expire on the system clock.
    ///
    /// # Errors
    /// The error of binding the port.
    pub async fn start() -> io::Result<Self> {
        Self::serve(None).await
    }

    /// Starts the fake with its tokens expiring, and its rate limit counting, on `clock`, and
    /// [`auth_builder`](Self::auth_builder) giving the layer the same clock: a test that moves a
    /// [`ManualClock`](super::ManualClock) expires the fake's tokens and the layer's together.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{sync::Arc, time::Duration};
    /// use iqm_auth::testing::{FakeIqm, ManualClock};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let iqm = FakeIqm::start_with_clock(clock.clone()).await?;
    /// let auth = iqm.auth_builder().build()?;
    /// let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(auth)
    ///     .build();
    ///
    /// client.get(iqm.url("/api/v3/campaigns")).send().await?;
    /// clock.advance(Duration::from_secs(3600)); // the token expires, here and at the fake
    /// assert_eq!(client.get(iqm.url("/api/v3/campaigns")).send().await?.status(), 200);
    /// assert_eq!((iqm.logins(), iqm.refreshes(), iqm.unauthorized()), (1, 1, 0));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The error of binding the port.
    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> io::Result<Self> {
        Self::serve(Some(clock)).await
    }

    async fn serve(clock: Option<Arc<dyn Clock>>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            clock: clock.clone().unwrap_or_else(|| Arc::new(SystemClock)),
            knobs: Mutex::default(),
            counters: Counters::default(),
            tokens: Mutex::default(),
            invited: Mutex::default(),
            seen: Mutex::default(),
            admitted: Mutex::default(),
        });
        let app = Router::new()
            .route("/api/v3/ua/login", post(login))
            .route("/api/v3/ua/oauth/token", post(token))
            .route("/api/v3/ua/logout", post(logout))
            .route("/api/v3/ua/sign-up", post(sign_up))
            .fallback(protected_api)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "the fake IQM server stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            clock,
            server,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of `path` on this fake.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// A builder filled in with this fake's base URL and the credentials it accepts, and the
    /// fake's clock if it was started with one.
    pub fn auth_builder(&self) -> IqmAuthBuilder {
        let builder = IqmAuth::builder()
            .base_url(self.base_url())
            .client_credentials(CLIENT_ID, CLIENT_SECRET)
            .workspace_host(WORKSPACE_HOST)
            .credentials(EMAIL, PASSWORD);
        match &self.clock {
            Some(clock) => builder.clock(Arc::clone(clock)),
            None => builder,
        }
    }

    /// Login calls received.
    pub fn logins(&self) -> u64 {
        self.shared.counters.logins.load(SeqCst)
    }
    /// Refresh-grant calls received.
    pub fn refreshes(&self) -> u64 {
        self.shared.counters.refreshes.load(SeqCst)
    }
    /// Logout calls received.
    pub fn logouts(&self) -> u64 {
        self.shared.counters.logouts.load(SeqCst)
    }
    /// Sign-up calls received.
    pub fn sign_ups(&self) -> u64 {
        self.shared.counters.sign_ups.load(SeqCst)
    }
    /// Calls to the protected API received.
    pub fn api_calls(&self) -> u64 {
        self.shared.counters.api_calls.load(SeqCst)
    }
    /// Calls to the protected API answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.shared.counters.unauthorized.load(SeqCst)
    }
    /// Login and refresh calls received.
    pub fn auth_calls(&self) -> u64 {
        self.logins() + self.refreshes()
    }
    /// Login and refresh calls that got no usable token set: refused, failed, rate-limited or
    /// answered with a broken body.
    pub fn failed_auth_calls(&self) -> u64 {
        self.auth_calls() - self.shared.counters.good_auth_answers.load(SeqCst)
    }
    /// Calls answered 429 by the rate limit of [`set_rate_limit`](Self::set_rate_limit).
    pub fn rate_limited(&self) -> u64 {
        self.shared.counters.rate_limited.load(SeqCst)
    }
    /// Refresh calls that presented a refresh token already spent by an earlier refresh (IQM
    /// rotates them): a client that does this has lost track of its session.
    pub fn refresh_reuses(&self) -> u64 {
        self.shared.counters.refresh_reuses.load(SeqCst)
    }

    /// What the protected API saw, oldest first.
    pub fn seen_requests(&self) -> Vec<SeenRequest> {
        self.shared.seen.lock().clone()
    }

    /// How long new access tokens stay valid here, and (unless
    /// [`set_expires_in`](Self::set_expires_in) says otherwise) the `expires_in` answered.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.knobs.lock().token_lifetime = lifetime;
    }

    /// The `expires_in` value answered, as any JSON (a number, a string, `null`…), regardless
    /// of how long the tokens really stay valid here. `None` answers the real lifetime.
    pub fn set_expires_in(&self, value: Option<Value>) {
        self.shared.knobs.lock().expires_in = value;
    }

    /// How long each login call waits before it answers.
    pub fn set_login_delay(&self, delay: Duration) {
        self.shared.knobs.lock().login_delay = delay;
    }

    /// How long each refresh call waits before it answers.
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.shared.knobs.lock().refresh_delay = delay;
    }

    /// How login calls with correct credentials are answered from now on.
    pub fn set_login_answer(&self, answer: Answer) {
        self.shared.knobs.lock().login_answer = answer;
    }

    /// How the next login calls with correct credentials are answered, one answer each, before
    /// the answer [`set_login_answer`](Self::set_login_answer) set applies again: e.g. two 503s
    /// and then a recovery.
    pub fn queue_login_answers(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.knobs.lock().login_queue.extend(answers);
    }

    /// How refresh calls with a known refresh token are answered from now on.
    pub fn set_refresh_answer(&self, answer: Answer) {
        self.shared.knobs.lock().refresh_answer = answer;
    }

    /// Like [`queue_login_answers`](Self::queue_login_answers), for refresh calls.
    pub fn queue_refresh_answers(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.knobs.lock().refresh_queue.extend(answers);
    }

    /// Answers the next calls to the protected API with these statuses, one each, whatever
    /// their token, before it checks tokens again: e.g. a 503 for a retry layer to retry.
    pub fn queue_api_answers(&self, statuses: impl IntoIterator<Item = u16>) {
        self.shared.knobs.lock().api_queue.extend(statuses);
    }

    /// Answers requests to `path` on the protected API with `307 Temporary Redirect` to
    /// `location`, before any token check.
    pub fn redirect(&self, path: &str, location: &str) {
        self.shared
            .knobs
            .lock()
            .redirects
            .insert(path.to_owned(), location.to_owned());
    }

    /// Whether a refresh answer carries a new refresh token (the old one then stops working).
    /// On by default.
    pub fn set_refresh_rotation(&self, rotate: bool) {
        self.shared.knobs.lock().rotate_refresh_tokens = rotate;
    }

    /// Limits every caller together to `per_minute` calls in any minute of the fake's clock,
    /// auth calls included, as IQM does (about 20): past it, calls are answered
    /// `429 Too Many Requests` with a `Retry-After` of the seconds until a call is admitted
    /// again. Calls answered 429 do not count. `None` (the default) is no limit.
    pub fn set_rate_limit(&self, per_minute: Option<u32>) {
        self.shared.knobs.lock().rate_limit = per_minute;
    }

    /// Revokes every access token issued so far: the protected API answers 401 to them.
    pub fn revoke_all_access_tokens(&self) {
        self.shared.tokens.lock().access.clear();
    }

    /// Revokes every refresh token issued so far: refresh calls with them are rejected.
    pub fn revoke_all_refresh_tokens(&self) {
        self.shared.tokens.lock().refresh.clear();
    }

    /// Lets `email` sign up.
    pub fn invite(&self, email: &str) {
        self.shared.invited.lock().insert(email.to_owned());
    }
}

impl Drop for FakeIqm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn envelope_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "errorObjects": [{"error": error}]})),
    )
        .into_response()
}

fn basic_ok(headers: &HeaderMap) -> bool {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        == Some(expected.as_str())
}

impl Shared {
    /// Admits a call under the rate limit, or answers it 429.
    fn rate_limit(&self) -> Option<Response> {
        const MINUTE: Duration = Duration::from_secs(60);
        let limit = self.knobs.lock().rate_limit?;
        let now = self.clock.now();
        let mut admitted = self.admitted.lock();
        while admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            admitted.pop_front();
        }
        if admitted.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
            admitted.push_back(now);
            return None;
        }
        self.counters.rate_limited.fetch_add(1, SeqCst);
        let free_in = admitted.front().map_or(Duration::ZERO, |oldest| {
            MINUTE - now.duration_since(*oldest)
        });
        let seconds = free_in.as_secs() + u64::from(free_in.subsec_nanos() > 0);
        let mut response = envelope_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        Some(response)
    }

    /// Issues a token set and answers it in `shape`, the way `answer` says. `kept_refresh` is
    /// the refresh token a non-rotating refresh answers with again.
    fn issue(&self, answer: &Answer, shape: Shape, kept_refresh: Option<String>) -> Response {
        let (lifetime, expires_in) = {
            let knobs = self.knobs.lock();
            let expires_in = knobs
                .expires_in
                .clone()
                .unwrap_or_else(|| expires_in_of(knobs.token_lifetime));
            (knobs.token_lifetime, expires_in)
        };
        let (access, refresh) = {
            let mut tokens = self.tokens.lock();
            tokens.next += 1;
            let n = tokens.next;
            let access = format!("access-{n:04}-{:016x}", random_u64());
            let refresh =
                kept_refresh.unwrap_or_else(|| format!("refresh-{n:04}-{:016x}", random_u64()));
            let expires = self.clock.now().checked_add(lifetime);
            if let Some(expires) = expires {
                tokens.access.insert(access.clone(), expires);
            }
            tokens.refresh.insert(refresh.clone());
            (access, refresh)
        };
        let mut data = json!({
            "access_token": access,
            "refresh_token": refresh,
            "scope": "read write",
            "token_type": "bearer",
            "expires_in": expires_in,
        });
        if shape == Shape::Login {
            data["owId"] = json!(OW_ID);
        }
        let raw = |body: String| (StatusCode::OK, body).into_response();
        match answer {
            Answer::Normal => {
                if shape != Shape::SignUp {
                    self.counters.good_auth_answers.fetch_add(1, SeqCst);
                }
            }
            Answer::Status(code) => {
                let status =
                    StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return envelope_error(status, "Simulated failure");
            }
            Answer::StatusRetryAfter(code, seconds) => {
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                let mut response = envelope_error(status, "Simulated failure");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
                return response;
            }
            Answer::TruncatedJson => {
                return raw(r#"{"success":true,"data":{"access_token":"abc"#.to_owned());
            }
            Answer::Html => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body><h1>Maintenance</h1></body></html>",
                )
                    .into_response();
            }
            Answer::ErrorEnvelope => {
                return envelope_error(StatusCode::OK, "Simulated error in a 200");
            }
            Answer::MissingAccessToken => {
                data.as_object_mut().map(|d| d.remove("access_token"));
            }
            Answer::EmptyAccessToken => data["access_token"] = json!(""),
            Answer::HeaderInjection => data["access_token"] = json!("abc\r\nX-Injected: yes"),
            Answer::MissingOwId => {
                data.as_object_mut().map(|d| d.remove("owId"));
            }
            Answer::Raw(body) => return raw(body.clone()),
            Answer::Page {
                status,
                size,
                retry_after,
            } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let filler = "<p>Service unavailable</p>".repeat(size / 26 + 1);
                let page = format!("<html><body>{filler}</body></html>");
                let mut response = (
                    status,
                    [(header::CONTENT_TYPE, "text/html")],
                    page[..(*size).min(page.len())].to_owned(),
                )
                    .into_response();
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
                }
                return response;
            }
            Answer::ResetMidBody => {
                let chunks: [Result<&'static str, io::Error>; 2] = [
                    Ok(r#"{"success":true,"data":{"access_token":"#),
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "cut by the fake",
                    )),
                ];
                let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
                return (StatusCode::OK, body).into_response();
            }
        }
        let body = match shape {
            Shape::Login | Shape::SignUp => json!({"success": true, "data": data}),
            Shape::Refresh => data,
        };
        (StatusCode::OK, axum::Json(body)).into_response()
    }
}

async fn login(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.counters.logins.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    let (delay, answer) = {
        let mut knobs = shared.knobs.lock();
        let answer = knobs
            .login_queue
            .pop_front()
            .unwrap_or_else(|| knobs.login_answer.clone());
        (knobs.login_delay, answer)
    };
    tokio::time::sleep(delay).await;
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    if headers.get("x-iaa-host").and_then(|v| v.to_str().ok()) != Some(WORKSPACE_HOST) {
        return envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return envelope_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    if body["grantType"] != "password" || body["email"] != EMAIL || body["password"] != PASSWORD {
        return envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED);
    }
    shared.issue(&answer, Shape::Login, None)
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    shared.counters.refreshes.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    let (delay, answer, rotate) = {
        let mut knobs = shared.knobs.lock();
        let answer = knobs
            .refresh_queue
            .pop_front()
            .unwrap_or_else(|| knobs.refresh_answer.clone());
        (knobs.refresh_delay, answer, knobs.rotate_refresh_tokens)
    };
    tokio::time::sleep(delay).await;
    let invalid_grant = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": description})),
        )
            .into_response()
    };
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    let Ok(axum::Form(form)) = form else {
        return invalid_grant("The body is not a form");
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return invalid_grant("Unsupported grant type");
    }
    let Some(presented) = form.get("refresh_token") else {
        return invalid_grant("Missing refresh token");
    };
    {
        let mut tokens = shared.tokens.lock();
        if !tokens.refresh.contains(presented) {
            if tokens.spent_refresh.contains(presented) {
                shared.counters.refresh_reuses.fetch_add(1, SeqCst);
            }
            return invalid_grant("Invalid refresh token");
        }
        if rotate && answer == Answer::Normal {
            tokens.refresh.remove(presented);
            tokens.spent_refresh.insert(presented.clone());
        }
    }
    let keep = (!rotate).then(|| presented.clone());
    shared.issue(&answer, Shape::Refresh, keep)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn live(shared: &Shared, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|token| {
        shared
            .tokens
            .lock()
            .access
            .get(token)
            .is_some_and(|expires| shared.clock.now() < *expires)
    })
}

async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.counters.logouts.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    if !live(&shared, &headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if let Some(token) = bearer(&headers) {
        shared.tokens.lock().access.remove(token);
    }
    axum::Json(json!({"success": true, "data": "User logged out successfully."})).into_response()
}

async fn sign_up(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.counters.sign_ups.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return envelope_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return envelope_error(StatusCode::BAD_REQUEST, "email and password are required");
    };
    if !shared.invited.lock().contains(email) {
        return envelope_error(
            StatusCode::FORBIDDEN,
            "User is not invited to this workspace.",
        );
    }
    let strong = password.chars().count() >= 8
        && password.chars().any(|c| c.is_uppercase())
        && password.chars().any(|c| c.is_lowercase())
        && password.chars().any(|c| !c.is_alphanumeric());
    if !strong {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "Password must have at least 8 characters, one upper-case, one lower-case and one special character.",
        );
    }
    shared.issue(&Answer::Normal, Shape::SignUp, None)
}

async fn protected_api(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counters.api_calls.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    let headers = request.headers();
    let (redirect, queued) = {
        let mut knobs = shared.knobs.lock();
        let redirect = knobs.redirects.get(request.uri().path()).cloned();
        (redirect, knobs.api_queue.pop_front())
    };
    let ow_ids: Vec<String> = headers
        .get_all("x-iaa-ow-id")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let valid_bearer = live(&shared, headers);
    shared.seen.lock().push(SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        has_authorization: headers.contains_key(header::AUTHORIZATION),
        valid_bearer,
        ow_ids: ow_ids.clone(),
    });
    if let Some(status) = queued {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return envelope_error(status, "Simulated API failure");
    }
    if let Some(location) = redirect {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response();
    }
    if !valid_bearer {
        shared.counters.unauthorized.fetch_add(1, SeqCst);
        return envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let [ow_id] = ow_ids.as_slice() else {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "Exactly one X-IAA-OW-ID header is required.",
        );
    };
    if ow_id.parse::<u64>().is_err() {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "X-IAA-OW-ID must be a workspace id.",
        );
    }
    axum::Json(json!({
        "success": true,
        "data": {"method": request.method().as_str(), "path": request.uri().path(), "owId": ow_id},
    }))
    .into_response()
}

/// Whole seconds as IQM sends them; a sub-second test lifetime as a float.
fn expires_in_of(lifetime: Duration) -> Value {
    if lifetime.subsec_nanos() == 0 {
        json!(lifetime.as_secs())
    } else {
        json!(lifetime.as_secs_f64())
    }
}

/// Token material that differs between runs, without a dependency for it.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
