//! A fake IQM on loopback, built on axum: login, the refresh grant (rotating refresh tokens),
//! logout, sign-up and a protected API, with counters and fault knobs. The server's state and
//! handlers are in `server.rs`; this file is the handle tests hold.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::IqmAuth;
use crate::clock::{Clock, SystemClock};
use crate::config::IqmAuthBuilder;

use super::answer::Answer;
use super::routes::{login, logout, protected_api, sign_up, token};
use super::server::Shared;

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

/// A fake IQM server on `127.0.0.1`, stopped when dropped.
///
/// It checks what real IQM checks: Basic client credentials on login, refresh and sign-up,
/// `X-IAA-HOST` and the user's password on login, a refresh token presented by the client it
/// was issued to, a live bearer token and an `X-IAA-OW-ID` on every other path (its "protected
/// API", which answers 200 with the path and workspace it saw, and the `user` and `clientId`
/// the token was issued to). Its counters count every call received, failed ones included.
pub struct FakeIqm {
    addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::new(
            clock.clone().unwrap_or_else(|| Arc::new(SystemClock)),
        ));
        let app = Router::new()
            .route("/api/v3/ua/login", post(login))
            .route("/api/v3/ua/oauth/token", post(token))
            .route("/api/v3/ua/logout", post(logout))
            .route("/api/v3/ua/sign-up", post(sign_up))
            .fallback(protected_api)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                super::limits::record,
            ))
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
    /// rotates them): a client that does this has lost track of its session, and a real OAuth
    /// server may revoke the whole token family for it. Tests assert it stays 0; see
    /// [`hold_refresh_answers`](Self::hold_refresh_answers) for an example.
    pub fn refresh_reuses(&self) -> u64 {
        self.shared.counters.refresh_reuses.load(SeqCst)
    }

    /// When each login and refresh call that got no usable token set (see
    /// [`failed_auth_calls`](Self::failed_auth_calls)) arrived, on the fake's clock, oldest
    /// first: for bounds on failed calls in any window of time.
    pub fn failed_auth_call_times(&self) -> Vec<std::time::Instant> {
        let mut times = self.shared.failed_auth_arrivals.lock().clone();
        times.sort_unstable();
        times
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

    /// How long each login call waits after it has issued its token set, before it answers: an
    /// answer lost after IQM acted, when the wait outlasts the caller's timeout.
    pub fn hold_login_answers(&self, hold: Duration) {
        self.shared.knobs.lock().login_hold = hold;
    }

    /// How long each refresh call waits after it has acted (rotated the refresh token, issued
    /// a new set), before it answers. Held past the layer's `auth_timeout`, the answer is lost
    /// after IQM acted: the refresh token presented is spent, and presenting it again shows in
    /// [`refresh_reuses`](Self::refresh_reuses).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use iqm_auth::testing::FakeIqm;
    ///
    /// let iqm = FakeIqm::start().await?;
    /// let auth = iqm.auth_builder().auth_timeout(Duration::from_millis(200)).build()?;
    /// auth.access_token().await?;
    ///
    /// iqm.hold_refresh_answers(Duration::from_millis(400));
    /// auth.renew().await?; // the refresh rotates, its answer is lost: the layer logs in
    /// assert_eq!((iqm.logins(), iqm.refreshes(), iqm.refresh_reuses()), (2, 1, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn hold_refresh_answers(&self, hold: Duration) {
        self.shared.knobs.lock().refresh_hold = hold;
    }

    /// How login calls with correct credentials are answered from now on. IQM's refusals come
    /// as a 4xx or, on some paths, inside a 200 (`Answer::ErrorEnvelope`); the layer takes both
    /// as a refusal and cools down:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iqm_auth::testing::{Answer, FakeIqm};
    ///
    /// let iqm = FakeIqm::start().await?;
    /// iqm.set_login_answer(Answer::ErrorEnvelope);
    /// let auth = iqm.auth_builder().build()?;
    /// for _ in 0..3 {
    ///     assert!(auth.access_token().await.is_err());
    /// }
    /// assert_eq!(iqm.logins(), 1); // the refusal's cool-down answers the other two
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_login_answer(&self, answer: Answer) {
        self.shared.knobs.lock().login_answer = answer;
    }

    /// How the next login calls with correct credentials are answered, one answer each, before
    /// the answer [`set_login_answer`](Self::set_login_answer) set applies again: e.g. two 503s
    /// and then a recovery.
    pub fn queue_login_answers(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.knobs.lock().login_queue.extend(answers);
    }

    /// How refresh calls with a known refresh token are answered from now on, for example a
    /// 429 with IQM's `Retry-After`:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use iqm_auth::testing::{Answer, FakeIqm};
    ///
    /// let iqm = FakeIqm::start().await?;
    /// let auth = iqm.auth_builder().build()?;
    /// auth.access_token().await?;
    ///
    /// iqm.set_refresh_answer(Answer::StatusRetryAfter(429, 30));
    /// let err = auth.renew().await.unwrap_err();
    /// assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    /// assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1)); // no login into the same limit
    /// # Ok(())
    /// # }
    /// ```
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
        let answers = statuses.into_iter().map(|status| (status, None));
        self.shared.knobs.lock().api_queue.extend(answers);
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iqm_auth::testing::FakeIqm;
    ///
    /// let iqm = FakeIqm::start().await?;
    /// iqm.set_rate_limit(Some(2));
    /// let auth = iqm.auth_builder().build()?;
    /// let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(auth)
    ///     .build();
    /// // The login is the first call of the minute, this request the second.
    /// assert_eq!(client.get(iqm.url("/x")).send().await?.status(), 200);
    /// assert_eq!(client.get(iqm.url("/x")).send().await?.status(), 429);
    /// assert_eq!(iqm.rate_limited(), 1);
    /// # Ok(())
    /// # }
    /// ```
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

    /// Lets another user log in, with `password`, besides [`EMAIL`]: a second account on the
    /// same fake. Its tokens answer the protected API with its `user`.
    pub fn add_user(&self, email: &str, password: &str) {
        self.shared
            .users
            .lock()
            .insert(email.to_owned(), password.to_owned());
    }

    /// Accepts another pair of client credentials besides [`CLIENT_ID`]'s: a second account
    /// on the same fake. Its tokens answer the protected API with its `clientId`, and its
    /// refresh tokens are refused to any other client.
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        self.shared
            .clients
            .lock()
            .insert(client_id.to_owned(), client_secret.to_owned());
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
