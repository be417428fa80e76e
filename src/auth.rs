//! [`IqmAuth`], the handle users hold: the middleware itself, and the few calls that need a
//! token outside `reqwest`.

use std::fmt;
use std::sync::Arc;

use reqwest::Url;

use crate::config::{Config, IqmAuthBuilder};
use crate::error::{AuthError, ConfigError};
use crate::iqm_api::{LOGIN_PATH, SIGN_UP_PATH, TOKEN_PATH};
use crate::secret::Secret;
use crate::session::Session;
use crate::stats::{RenewReason, Stats};
use crate::status::StatusSources;
use crate::token::TokenSet;

/// Authenticates every request to IQM that passes through a `reqwest_middleware` client.
///
/// Cheap to clone: clones share one token cache, so give every client the same `IqmAuth` (or
/// clones of it) and they share one login.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
/// # let builder = iqm.auth_builder();
/// // `builder` holds the base URL and credentials (here those of a fake IQM).
/// let auth = builder.build()?;
/// let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.clone())
///     .build();
///
/// let (a, b) = tokio::join!(
///     client.get(iqm.url("/api/v3/campaigns")).send(),
///     client.get(iqm.url("/api/v3/creatives")).send(),
/// );
/// assert_eq!((a?.status().as_u16(), b?.status().as_u16()), (200, 200));
/// assert_eq!(auth.stats().logins, 1); // one login, shared
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct IqmAuth {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) session: Arc<Session>,
    pub(crate) replay_unauthorized: bool,
    pub(crate) status_sources: StatusSources,
    origin: Origin,
    base: Url,
}

/// The most redirects the policy of [`IqmAuth::redirect_policy`] follows, as reqwest's default.
const MAX_REDIRECTS: usize = 10;

/// The scheme, host and port whose requests are authenticated, and the auth endpoints below the
/// base URL, whose requests pass through untouched.
#[derive(Clone)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    auth_paths: [String; 3],
}

impl Origin {
    fn of(base: &Url) -> Self {
        let path = |endpoint: &str| format!("{}{endpoint}", base.path());
        Self {
            scheme: base.scheme().to_owned(),
            host: base.host_str().unwrap_or_default().to_owned(),
            port: base.port_or_known_default(),
            auth_paths: [path(LOGIN_PATH), path(TOKEN_PATH), path(SIGN_UP_PATH)],
        }
    }

    fn is_iqm(&self, url: &Url) -> bool {
        url.port_or_known_default() == self.port
            && url.host_str() == Some(self.host.as_str())
            && url.scheme() == self.scheme
    }

    fn is_auth_endpoint(&self, url: &Url) -> bool {
        let path = url.path();
        self.auth_paths.iter().any(|auth| auth == path)
    }
}

impl Inner {
    /// Whether `url` is on IQM's origin (scheme, host and port).
    pub(crate) fn is_iqm(&self, url: &Url) -> bool {
        self.origin.is_iqm(url)
    }

    /// Whether the middleware authenticates this request: it goes to IQM's origin, not to one of
    /// the auth endpoints, and carries no `Authorization` of the caller's own.
    pub(crate) fn applies_to(&self, request: &reqwest::Request) -> bool {
        self.origin.is_iqm(request.url())
            && !request.headers().contains_key(http::header::AUTHORIZATION)
            && !self.origin.is_auth_endpoint(request.url())
    }
}

impl IqmAuth {
    /// Starts building an `IqmAuth`.
    pub fn builder() -> IqmAuthBuilder {
        IqmAuthBuilder::default()
    }

    /// Builds an `IqmAuth` from the environment: `IQM_CLIENT_ID`, `IQM_CLIENT_SECRET`,
    /// `IQM_WORKSPACE_HOST`, `IQM_EMAIL`, `IQM_PASSWORD`, and optionally `IQM_BASE_URL`.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] naming every required variable that is unset or empty, or the
    /// error [`IqmAuthBuilder::build`] gives.
    pub fn from_env() -> Result<Self, ConfigError> {
        IqmAuthBuilder::from_env()?.build()
    }

    pub(crate) fn new(config: Config) -> Result<Self, ConfigError> {
        let origin = Origin::of(&config.base);
        let base = config.base.clone();
        let replay_unauthorized = config.replay_unauthorized;
        let status_sources = StatusSources::of(&config);
        Ok(Self {
            inner: Arc::new(Inner {
                session: Arc::new(Session::new(config)?),
                replay_unauthorized,
                status_sources,
                origin,
                base,
            }),
        })
    }

    /// A currently valid access token, logging in first if needed: for calls made outside
    /// `reqwest`, such as a websocket. Shares the cache (and any login in flight) with the
    /// middleware.
    ///
    /// It comes back as a plain `String` because it is about to be sent somewhere: it is a
    /// secret, so do not log it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// # let auth = iqm.auth_builder().build()?;
    /// let token = auth.access_token().await?;
    /// let answer = reqwest::Client::new()
    ///     .get(iqm.url("/api/v3/campaigns"))
    ///     .bearer_auth(&token)
    ///     .header("X-IAA-OW-ID", auth.ow_id().unwrap_or_default())
    ///     .send()
    ///     .await?;
    /// assert_eq!(answer.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The [`AuthError`] of the login or renewal, if one was needed and failed.
    pub async fn access_token(&self) -> Result<String, AuthError> {
        let session = &self.inner.session;
        let exposed = |token: &crate::token::CachedToken| token.access_token.expose().to_owned();
        match session.usable_now(exposed) {
            Some(token) => Ok(token),
            None => Ok(exposed(&*session.wait_for_token().await?)),
        }
    }

    /// The IQM base URL requests are authenticated for (always ending in `/`). Join API paths
    /// to it: `auth.base_url().join("api/v3/ua/profile")`.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The Organization Workspace ID (`owId`) of the cached token, if a login has happened.
    pub fn ow_id(&self) -> Option<u64> {
        self.inner.session.current().map(|token| token.ow_id)
    }

    /// Renews the token now (refresh-token grant, or login), whatever its expiry, and waits for
    /// it. Concurrent calls share one renewal.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// # let auth = iqm.auth_builder().build()?;
    /// let before = auth.access_token().await?;
    /// auth.renew().await?;
    /// assert_ne!(auth.access_token().await?, before);
    /// assert_eq!(auth.stats().renewals_forced, 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The [`AuthError`] of the renewal.
    pub async fn renew(&self) -> Result<(), AuthError> {
        let session = &self.inner.session;
        let stale = session.current().map(|token| token.generation);
        session.renew(RenewReason::Forced, stale).await.map(drop)
    }

    /// Logs out at IQM (`POST /api/v3/ua/logout` with the cached bearer token) and forgets the
    /// cached tokens, so the next request logs in again. Does nothing if no token is cached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// # let auth = iqm.auth_builder().build()?;
    /// auth.access_token().await?;
    /// auth.logout().await?;
    /// assert_eq!(auth.ow_id(), None);
    /// # assert_eq!(iqm.logouts(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The [`AuthError`] of the logout call. The tokens are forgotten even then.
    pub async fn logout(&self) -> Result<(), AuthError> {
        self.inner.session.logout().await
    }

    /// Creates an account for an invited user (`POST /api/v3/ua/sign-up`, with this
    /// `IqmAuth`'s client credentials) and returns the new account's token set. The cache is
    /// left as it is: the middleware keeps using its own configured user.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// # let auth = iqm.auth_builder().build()?;
    /// # iqm.invite("new@acme.example");
    /// let tokens = auth.sign_up("new@acme.example", "Str0ng!Pass").await?;
    /// assert!(tokens.refresh_token.is_some());
    ///
    /// let err = auth.sign_up("new@acme.example", "weak").await.unwrap_err();
    /// assert_eq!(err.status(), Some(reqwest::StatusCode::BAD_REQUEST));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`AuthError::Rejected`] with IQM's message, for example when the user was not invited or
    /// the password does not meet IQM's policy.
    pub async fn sign_up(
        &self,
        email: impl AsRef<str>,
        password: impl Into<String>,
    ) -> Result<TokenSet, AuthError> {
        let password = Secret::new(password);
        self.inner.session.sign_up(email.as_ref(), &password).await
    }

    /// A redirect policy for the `reqwest::Client` under the middleware, so that IQM's
    /// credentials never leave IQM's origin.
    ///
    /// reqwest follows redirects below the middleware and strips only `Authorization` when one
    /// leaves the origin: `X-IAA-OW-ID` (and any other header) would follow a redirect to
    /// another host, or from https to http. With this policy, a redirect chain that starts at
    /// IQM's origin is followed only while it stays there (scheme, host and port); one that leaves
    /// is not followed, and its 3xx response is handed back to the caller. Chains that start
    /// elsewhere are followed as reqwest's default does (at most 10 hops).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let auth = iqm_auth::IqmAuth::builder().client_credentials("i", "s")
    /// #     .workspace_host("acme.iqm.com").credentials("e", "p").build()?;
    /// let http = reqwest::Client::builder()
    ///     .redirect(auth.redirect_policy())
    ///     .build()?;
    /// let client = iqm_auth::reqwest_middleware::ClientBuilder::new(http)
    ///     .with(auth)
    ///     .build();
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let iqm = self.inner.origin.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            let from_iqm = attempt
                .previous()
                .first()
                .is_some_and(|url| iqm.is_iqm(url));
            if from_iqm && !iqm.is_iqm(attempt.url()) {
                tracing::warn!(
                    status = %attempt.status(),
                    "not following a redirect away from IQM's origin"
                );
                attempt.stop()
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        })
    }

    /// A snapshot of what the layer has done: logins, refreshes, renewals by reason, replays,
    /// failures by class. Reading it takes no lock.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// # let auth = iqm.auth_builder().build()?;
    /// auth.access_token().await?;
    /// let stats = auth.stats();
    /// assert_eq!((stats.logins, stats.renewals_first_use, stats.failed_renewals), (1, 1, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.session.stats()
    }
}

impl fmt::Debug for IqmAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("IqmAuth")
            .field("origin", &inner.base.origin().ascii_serialization())
            .field("replay_unauthorized", &inner.replay_unauthorized)
            .field("session", &inner.session)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(base: &str) -> Origin {
        Origin::of(&Url::parse(base).unwrap())
    }

    #[test]
    fn the_origin_is_scheme_host_and_port() {
        let iqm = origin("https://api.iqm.com/");
        let is_iqm = |url: &str| iqm.is_iqm(&Url::parse(url).unwrap());
        assert!(is_iqm("https://api.iqm.com/api/v3/x"));
        assert!(is_iqm("https://API.IQM.COM:443/x"));
        assert!(
            !is_iqm("http://api.iqm.com/x"),
            "https to http is another origin"
        );
        assert!(!is_iqm("https://api.iqm.com:8443/x"));
        assert!(!is_iqm("https://app.iqm.com/x"));
        assert!(!is_iqm("https://api.iqm.com.evil.example/x"));
    }

    #[test]
    fn auth_endpoints_are_recognised_below_a_base_path() {
        let iqm = origin("http://127.0.0.1:8080/iqm/");
        let is_auth = |url: &str| iqm.is_auth_endpoint(&Url::parse(url).unwrap());
        assert!(is_auth("http://127.0.0.1:8080/iqm/api/v3/ua/login"));
        assert!(is_auth("http://127.0.0.1:8080/iqm/api/v3/ua/oauth/token"));
        assert!(is_auth("http://127.0.0.1:8080/iqm/api/v3/ua/sign-up"));
        assert!(!is_auth("http://127.0.0.1:8080/iqm/api/v3/ua/logout"));
        assert!(!is_auth("http://127.0.0.1:8080/api/v3/ua/login"));
    }

    #[test]
    fn debug_prints_the_origin_as_a_url() {
        let auth = IqmAuth::builder()
            .base_url("http://127.0.0.1:39203")
            .client_credentials("i", "s")
            .workspace_host("acme.iqm.com")
            .credentials("e", "p")
            .build()
            .unwrap();
        let debug = format!("{auth:?}");
        assert!(
            debug.contains(r#"origin: "http://127.0.0.1:39203""#),
            "{debug}"
        );
    }

    #[test]
    fn iqm_auth_is_send_sync_static_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<IqmAuth>();
    }
}
