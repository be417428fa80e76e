//! The seam between the session and IQM's auth endpoints: the [`AuthApi`] trait. The session
//! decides what to call and when; an `AuthApi` only makes the calls. The HTTP client to IQM
//! (`iqm_api.rs`) is the one every layer uses unless told otherwise.

use std::fmt;

use crate::error::AuthError;
use crate::secret::Secret;
use crate::token::TokenSet;

/// IQM's auth endpoints, as the layer calls them. By default, IQM's own over HTTP, below the
/// base URL, with the client credentials and workspace host of the builder.
///
/// Give the builder another with [`IqmAuthBuilder::auth_api`](crate::IqmAuthBuilder::auth_api)
/// to run the layer against something else: a simulation of IQM (the crate's own deterministic
/// simulator does), a recording, a gateway of your own. The layer bounds every call by its
/// `auth_timeout` (a call still running then is dropped, and counts as one IQM may have acted
/// on), classifies errors with [`AuthError::class`], and never calls two renewals' worth at
/// once. Report a refusal as [`AuthError::Rejected`] with IQM's status, and an answer that cannot
/// be used as [`AuthError::InvalidResponse`].
///
/// ```
/// use iqm_auth::{AuthApi, AuthEndpoint, AuthError, Secret, TokenSet};
///
/// /// Hands out one fixed token set, and refuses refreshes.
/// #[derive(Debug)]
/// struct Fixed;
///
/// #[async_trait::async_trait]
/// impl AuthApi for Fixed {
///     async fn login(&self, _email: &str, _password: &Secret) -> Result<TokenSet, AuthError> {
///         let mut set = TokenSet::new("access", std::time::Duration::from_secs(3600));
///         set.ow_id = Some(200_001);
///         Ok(set)
///     }
///     async fn refresh(&self, _refresh_token: &Secret) -> Result<TokenSet, AuthError> {
///         Err(AuthError::Rejected {
///             endpoint: AuthEndpoint::Refresh,
///             status: http::StatusCode::BAD_REQUEST,
///             messages: Vec::new(),
///             retry_after: None,
///         })
///     }
///     async fn logout(&self, _access_token: &Secret) -> Result<(), AuthError> {
///         Ok(())
///     }
///     async fn sign_up(&self, _email: &str, _password: &Secret) -> Result<TokenSet, AuthError> {
///         self.login("", &Secret::new("")).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = iqm_auth::IqmAuth::builder()
///     .client_credentials("id", "secret")
///     .workspace_host("acme.iqm.com")
///     .credentials("ops@acme.com", "password")
///     .auth_api(Fixed)
///     .build()?;
/// assert_eq!(auth.access_token().await?, "access");
/// assert_eq!(auth.ow_id(), Some(200_001));
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait AuthApi: Send + Sync + fmt::Debug + 'static {
    /// The password login (`POST /api/v3/ua/login`). The answer must carry the `owId`.
    async fn login(&self, email: &str, password: &Secret) -> Result<TokenSet, AuthError>;

    /// The refresh-token grant (`POST /api/v3/ua/oauth/token`). A set without a refresh token
    /// keeps the one presented in use.
    async fn refresh(&self, refresh_token: &Secret) -> Result<TokenSet, AuthError>;

    /// Invalidates `access_token` (`POST /api/v3/ua/logout`). A token that is no longer valid
    /// is a success.
    async fn logout(&self, access_token: &Secret) -> Result<(), AuthError>;

    /// Creates an account for an invited user (`POST /api/v3/ua/sign-up`).
    async fn sign_up(&self, email: &str, password: &Secret) -> Result<TokenSet, AuthError>;
}
