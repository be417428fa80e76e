//! The crate's error types.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

/// Which of IQM's auth endpoints a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthEndpoint {
    /// `POST /api/v3/ua/login`
    Login,
    /// `POST /api/v3/ua/oauth/token` with the refresh-token grant.
    Refresh,
    /// `POST /api/v3/ua/logout`
    Logout,
    /// `POST /api/v3/ua/sign-up`
    SignUp,
}

impl fmt::Display for AuthEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Login => "login",
            Self::Refresh => "token refresh",
            Self::Logout => "logout",
            Self::SignUp => "sign-up",
        })
    }
}

/// One entry of IQM's `errorObjects` (or of a plain OAuth error body).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IqmMessage {
    /// IQM's message, e.g. `User doesn't exist or user is not allowed to provided workspace.`
    pub error: String,
    /// IQM's optional explanation.
    pub reason: Option<String>,
    /// The request field the message is about, when IQM names one.
    pub field: Option<String>,
}

impl fmt::Display for IqmMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        if let Some(field) = &self.field {
            write!(f, " [field: {field}]")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// Why a token could not be obtained or an auth call failed.
///
/// Requests sent through the middleware return it inside
/// [`reqwest_middleware::Error::Middleware`]; get it back with `downcast_ref`:
///
/// ```
/// # fn check(err: reqwest_middleware::Error) {
/// if let reqwest_middleware::Error::Middleware(inner) = &err {
///     if let Some(auth) = inner.downcast_ref::<iqm_auth::AuthError>() {
///         eprintln!("IQM auth failed: {auth} (status {:?})", auth.status());
///     }
/// }
/// # }
/// ```
///
/// No variant ever holds a password, client secret or token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// IQM answered and said no: a non-2xx status, or `"success": false`.
    #[error("IQM rejected the {endpoint} call ({status}){}", MessageList(.messages))]
    Rejected {
        /// The endpoint that refused.
        endpoint: AuthEndpoint,
        /// The HTTP status IQM answered with.
        status: StatusCode,
        /// IQM's own messages, in the order it gave them.
        messages: Vec<IqmMessage>,
        /// IQM's `Retry-After`, when it sent one (429, 503).
        retry_after: Option<Duration>,
    },
    /// The call did not complete: connect error, reset, a body cut off.
    #[error("the IQM {endpoint} call failed: {}", describe_transport(.source))]
    Transport {
        /// The endpoint that was called.
        endpoint: AuthEndpoint,
        /// What reqwest reported.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// IQM did not answer within the layer's `auth_timeout`: the call was abandoned, and IQM
    /// may have acted on it.
    #[error("the IQM {endpoint} call timed out after {after:?}")]
    TimedOut {
        /// The endpoint that was called.
        endpoint: AuthEndpoint,
        /// How long the layer waited.
        after: Duration,
    },
    /// IQM answered with a success status but a body this crate cannot use: not JSON,
    /// truncated, too large, or missing a field such as `access_token` or `owId`.
    #[error("IQM answered the {endpoint} call ({status}) with an unusable body: {problem}")]
    InvalidResponse {
        /// The endpoint that answered.
        endpoint: AuthEndpoint,
        /// The HTTP status it answered with.
        status: StatusCode,
        /// What is wrong with the body (never the body itself).
        problem: String,
    },
    /// Obtaining a token took longer than the acquisition budget
    /// ([`IqmAuthBuilder::acquire_timeout`](crate::IqmAuthBuilder::acquire_timeout)), retries
    /// included.
    #[error("IQM did not hand out a token within {0:?}")]
    BudgetExhausted(Duration),
    /// The task obtaining a token stopped before it finished, for example because the runtime
    /// is shutting down.
    #[error("the IQM token renewal stopped before it finished")]
    Interrupted,
    /// [`IqmAuth::logout`](crate::IqmAuth::logout) was called while this token was being
    /// obtained: the new token was dropped, and the next request logs in again.
    #[error("the IQM session was logged out while a token was being obtained")]
    LoggedOut,
    /// Too many auth calls failed lately: the layer's budget for failed login and refresh calls
    /// ([`IqmAuthBuilder::auth_call_budget`](crate::IqmAuthBuilder::auth_call_budget)) is spent,
    /// so no call is sent before `retry_after` has passed. It keeps a struggling IQM, or a wrong
    /// password, from eating the account's rate limit.
    #[error("too many IQM auth calls failed lately; the next one is allowed in {retry_after:?}")]
    CallBudgetExhausted {
        /// How long until the next auth call is allowed.
        retry_after: Duration,
    },
    /// A token was needed outside a Tokio runtime, which `reqwest` and this crate require.
    #[error("iqm-auth needs a Tokio runtime to obtain a token")]
    NoRuntime,
    /// The request (an API request, or one of the layer's auth calls) was not sent: IQM's rate
    /// limit would refuse it now. Nothing reached IQM; try again after `retry_after`.
    #[error("the request to IQM was not sent ({cause}); the next may go in {retry_after:?}")]
    RateLimited {
        /// How long until a request may be sent.
        retry_after: Duration,
        /// What held it back.
        cause: RateLimitCause,
    },
}

/// What held back a request refused with [`AuthError::RateLimited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitCause {
    /// IQM answered a request `429 Too Many Requests`, and its window (its `Retry-After`) is
    /// still closed for longer than the request may wait
    /// ([`rate_limit_wait`](crate::IqmAuthBuilder::rate_limit_wait)).
    Window,
    /// The request's turn in the pace of
    /// [`request_rate`](crate::IqmAuthBuilder::request_rate) would come later than it may wait.
    Pacing,
}

impl fmt::Display for RateLimitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Window => "IQM answered 429 and its window is closed",
            Self::Pacing => "its turn in the request rate comes too late",
        })
    }
}

impl AuthError {
    /// The HTTP status IQM answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Rejected { status, .. } | Self::InvalidResponse { status, .. } => Some(*status),
            Self::Transport { source, .. } => source.status(),
            Self::TimedOut { .. }
            | Self::BudgetExhausted(_)
            | Self::Interrupted
            | Self::LoggedOut
            | Self::CallBudgetExhausted { .. }
            | Self::RateLimited { .. }
            | Self::NoRuntime => None,
        }
    }

    /// Whether the failure may pass by itself: the call did not complete, timed out, or IQM
    /// answered 5xx, 408 or 429. Such failures are retried with backoff; others are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. }
            | Self::TimedOut { .. }
            | Self::BudgetExhausted(_)
            | Self::Interrupted => true,
            Self::Rejected { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::InvalidResponse { .. }
            | Self::NoRuntime
            | Self::LoggedOut
            | Self::CallBudgetExhausted { .. }
            | Self::RateLimited { .. } => false,
        }
    }

    /// How long to wait before the next try: IQM's `Retry-After` if it sent one, the time
    /// until the layer's budget for failed auth calls allows the next one, or until IQM's rate
    /// limit lets a request go.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected { retry_after, .. } => *retry_after,
            Self::CallBudgetExhausted { retry_after } | Self::RateLimited { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// What kind of failure this is. The one classification of errors that the layer's
    /// statistics, metric labels and renewal pacing all use.
    ///
    /// ```
    /// use iqm_auth::{AuthError, FailureClass};
    ///
    /// assert_eq!(AuthError::Interrupted.class(), FailureClass::Interrupted);
    /// assert_eq!(FailureClass::Transient.label(), "transient");
    /// ```
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Interrupted | Self::LoggedOut | Self::NoRuntime => FailureClass::Interrupted,
            Self::CallBudgetExhausted { .. } | Self::RateLimited { .. } => FailureClass::Throttled,
            Self::InvalidResponse { .. } => FailureClass::InvalidResponse,
            err if err.is_transient() => FailureClass::Transient,
            _ => FailureClass::Rejected,
        }
    }

    /// IQM's own messages (`errorObjects`), empty when it gave none.
    pub fn iqm_messages(&self) -> &[IqmMessage] {
        match self {
            Self::Rejected { messages, .. } => messages,
            _ => &[],
        }
    }

    /// The endpoint involved, if the error came from a call to IQM.
    pub fn endpoint(&self) -> Option<AuthEndpoint> {
        match self {
            Self::Rejected { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::TimedOut { endpoint, .. }
            | Self::InvalidResponse { endpoint, .. } => Some(*endpoint),
            Self::BudgetExhausted(_)
            | Self::Interrupted
            | Self::LoggedOut
            | Self::CallBudgetExhausted { .. }
            | Self::RateLimited { .. }
            | Self::NoRuntime => None,
        }
    }

    /// Whether IQM provably did not act on the call: the connection was never made, or IQM
    /// answered with a non-2xx status (500, 502, 503, 429, a refusal). Any other failure (a
    /// timeout after the call was sent, a connection cut before the whole answer arrived, a 2xx
    /// answer that could not be read, a gateway's 504, which says it stopped waiting for IQM)
    /// leaves the outcome unknown: IQM may have acted, say rotated a refresh token.
    pub(crate) fn iqm_did_not_act(&self) -> bool {
        match self {
            Self::Transport { source, .. } => source.is_connect(),
            Self::Rejected { status, .. } => {
                !status.is_success() && *status != StatusCode::GATEWAY_TIMEOUT
            }
            _ => false,
        }
    }

    /// The same error with its `retry_after`, if it has one, cut to `left`: an error handed to
    /// callers again later tells the time still left, not the time it first said.
    pub(crate) fn retry_after_at_most(mut self, left: Duration) -> Self {
        match &mut self {
            Self::Rejected {
                retry_after: Some(wait),
                ..
            }
            | Self::CallBudgetExhausted { retry_after: wait }
            | Self::RateLimited {
                retry_after: wait, ..
            } => *wait = (*wait).min(left),
            _ => {}
        }
        self
    }

    pub(crate) fn invalid(endpoint: AuthEndpoint, status: StatusCode, problem: &str) -> Self {
        Self::InvalidResponse {
            endpoint,
            status,
            problem: problem.to_owned(),
        }
    }

    pub(crate) fn transport(endpoint: AuthEndpoint, source: reqwest::Error) -> Self {
        // reqwest errors name the URL, which holds no secret here: the auth URLs carry none.
        Self::Transport {
            endpoint,
            source: Arc::new(source),
        }
    }
}

/// The kind of an [`AuthError`], from [`AuthError::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// May pass by itself: the call did not complete, timed out, or IQM answered 5xx, 408 or 429.
    Transient,
    /// IQM refused: a 4xx other than 408 and 429, or `"success": false`.
    Rejected,
    /// IQM answered with a body that cannot be used (not JSON, missing fields, bad token bytes).
    InvalidResponse,
    /// The renewal stopped before it finished (its runtime shut down, or a logout fenced it
    /// off), or there was no runtime.
    Interrupted,
    /// Nothing was sent: the layer's budget for failed auth calls is spent for now, or IQM's
    /// rate limit would refuse the request ([`AuthError::RateLimited`]).
    Throttled,
}

impl FailureClass {
    /// A short name for logs and metric labels: `transient`, `rejected`, `invalid_response`,
    /// `interrupted` or `throttled`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Rejected => "rejected",
            Self::InvalidResponse => "invalid_response",
            Self::Interrupted => "interrupted",
            Self::Throttled => "throttled",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

struct MessageList<'a>(&'a [IqmMessage]);

impl fmt::Display for MessageList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, message) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            message.fmt(f)?;
        }
        Ok(())
    }
}

fn describe_transport(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the connection broke while reading the answer"
    } else if err.is_redirect() {
        "IQM redirected the call, which auth calls never follow"
    } else {
        "the request could not be completed"
    }
}

/// Why an [`IqmAuth`](crate::IqmAuth) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not given, or is blank.
    #[error("missing IQM setting: {0}")]
    Missing(&'static str),
    /// The base URL does not parse, or is not `http`/`https`.
    #[error("invalid IQM base URL {url:?}: {problem}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The workspace host cannot be sent as an HTTP header.
    #[error("the IQM workspace host {0:?} is not a valid HTTP header value")]
    InvalidWorkspaceHost(String),
    /// Environment variables that [`IqmAuth::from_env`](crate::IqmAuth::from_env) needs are not
    /// set. Lists every missing one.
    #[error("missing environment variables: {}", .0.join(", "))]
    MissingEnv(Vec<&'static str>),
    /// The Redis URL of a shared session does not parse. The URL is shown without its user
    /// info, so a password in it never appears.
    #[error("invalid Redis URL {url:?}: {problem}")]
    InvalidRedisUrl {
        /// The URL as given, without user info.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A shared session's namespace holds characters other than letters, digits, `.`, `_` and
    /// `-`, or is empty or longer than 128 characters.
    #[error("invalid shared session namespace {0:?}")]
    InvalidNamespace(String),
    /// The HTTP client for the auth calls could not be built (TLS backend initialisation).
    #[error("could not build the HTTP client for IQM auth calls: {0}")]
    HttpClient(String),
}

#[cfg(test)]
mod tests;
