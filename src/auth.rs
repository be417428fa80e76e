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
use crate::token::TokenSet;

/// Authenticates every request to IQM that passes through a `reqwest_middleware` client.
///
/// Cheap to clone: clones share one token cache, so give every client the same `IqmAuth` (or
/// clones of it) and they share one login. See the [crate docs](crate) for a complete example.
#[derive(Clone)]
pub struct IqmAuth {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) session: Arc<Session>,
    pub(crate) replay_unauthorized: bool,
    origin: Origin,
}

/// The scheme, host and port whose requests are authenticated, and the auth endpoints below the
/// base URL, whose requests pass through untouched.
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
        let replay_unauthorized = config.replay_unauthorized;
        Ok(Self {
            inner: Arc::new(Inner {
                session: Arc::new(Session::new(config)?),
                replay_unauthorized,
                origin,
            }),
        })
    }

    /// A currently valid access token, logging in first if needed: for calls made outside
    /// `reqwest`, such as a websocket. Shares the cache (and any login in flight) with the
    /// middleware.
    ///
    /// # Errors
    /// The [`AuthError`] of the login or renewal, if one was needed and failed.
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        let session = &self.inner.session;
        match session.usable_now(|token| token.access_token.clone()) {
            Some(token) => Ok(token),
            None => Ok(session.wait_for_token().await?.access_token.clone()),
        }
    }

    /// The Organization Workspace ID (`owId`) of the cached token, if a login has happened.
    pub fn ow_id(&self) -> Option<u64> {
        self.inner.session.current().map(|token| token.ow_id)
    }

    /// Renews the token now (refresh-token grant, or login), whatever its expiry, and waits for
    /// it. Concurrent calls share one renewal.
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
    /// # Errors
    /// The [`AuthError`] of the logout call. The tokens are forgotten even then.
    pub async fn logout(&self) -> Result<(), AuthError> {
        self.inner.session.logout().await
    }

    /// Creates an account for an invited user (`POST /api/v3/ua/sign-up`, with this
    /// `IqmAuth`'s client credentials) and returns the new account's token set. The cache is
    /// left as it is: the middleware keeps using its own configured user.
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

    /// A snapshot of what the layer has done: logins, refreshes, renewals by reason, replays.
    pub fn stats(&self) -> Stats {
        self.inner.session.stats()
    }
}

impl fmt::Debug for IqmAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("IqmAuth")
            .field(
                "origin",
                &format_args!(
                    "{}://{}:{:?}",
                    inner.origin.scheme, inner.origin.host, inner.origin.port
                ),
            )
            .field("replay_unauthorized", &inner.replay_unauthorized)
            .field("session", &inner.session)
            .finish()
    }
}
