//! Keeping a session across restarts: the [`TokenStore`] trait, an in-memory store, and (with the
//! `file-store` feature) a file store.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::secret::Secret;

/// A token set as kept by a [`TokenStore`]: enough to resume a session without a login.
///
/// The expiry is wall-clock time, since monotonic instants do not survive a restart. `Debug`
/// redacts the tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredTokens {
    /// The bearer token.
    pub access_token: Secret,
    /// The refresh token, if IQM issued one.
    pub refresh_token: Option<Secret>,
    /// The Organization Workspace ID.
    pub ow_id: u64,
    /// When the access token expires.
    pub expires_at: SystemTime,
    /// The fingerprint of the account the set belongs to: a keyed hash (HMAC-SHA-256 under the
    /// client secret) of the base URL, client id, workspace host and user, which reveals none
    /// of them. The layer sets it on every set it saves, and resumes a stored set only if it
    /// matches its own account: a set without one, or another account's, is ignored (warned
    /// once, counted in [`Stats::foreign_sessions_ignored`](crate::Stats)), never sent. A
    /// [`TokenStore`] of your own must keep it with the tokens.
    pub account: Option<String>,
    /// Whether the set was shared with a fleet ([`shared_session`](crate::IqmAuthBuilder::shared_session)),
    /// or may have been (its publication's outcome was not known). A layer that resumes it on
    /// its own, with the shared session out of reach, uses its access token but never presents
    /// its refresh token (another replica may be presenting the same one): it logs in instead
    /// once the token expires. A [`TokenStore`] of your own must keep it with the tokens.
    pub shared: bool,
}

impl StoredTokens {
    /// A stored token set.
    pub fn new(
        access_token: Secret,
        refresh_token: Option<Secret>,
        ow_id: u64,
        expires_at: SystemTime,
    ) -> Self {
        Self {
            access_token,
            refresh_token,
            ow_id,
            expires_at,
            account: None,
            shared: false,
        }
    }

    /// The same set, marked as belonging to the account with this fingerprint (as read back
    /// from where a store of your own keeps it).
    #[must_use]
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// The same set, marked as shared with a fleet (as read back from where a store of your own
    /// keeps it).
    #[must_use]
    pub fn with_shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// How long the access token still lives, zero if it has expired.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// Why a [`TokenStore`] could not load, save or clear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("the token store could not be read or written: {0}")]
    Io(#[from] std::io::Error),
    /// What the store holds cannot be read as a token set. It is left as it is.
    #[error("the token store holds something unreadable: {0}")]
    Corrupt(String),
    /// Any other failure of a store of your own.
    #[error("the token store failed: {0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Where the layer keeps its token set between runs.
///
/// The layer calls [`load`](Self::load) before each renewal: a stored set of its account that is
/// not its own current one (saved before a restart, or by another layer on the same store) is
/// used without an auth call while it is valid, and renewed with its refresh token once it has
/// expired. It calls [`save`](Self::save) after every new token set from IQM (a rotated refresh
/// token included) and [`clear`](Self::clear) on logout. Layers given the same store (the same
/// `Arc`) renew one at a time, each reading the set the previous one saved, so they never
/// present a refresh token another has spent. A set is resumed only if its
/// [`account`](StoredTokens::account) is this layer's: keep that field with the tokens. Errors are
/// logged and counted ([`Stats::store_errors`](crate::Stats::store_errors)) and otherwise
/// ignored: a broken store costs a login, never a failed request. Each call is given 5 s.
///
/// A store of your own, say in a secrets manager:
///
/// ```
/// use iqm_auth::{StoreError, StoredTokens, TokenStore};
///
/// #[derive(Debug, Default)]
/// struct Vault { /* a client of your secrets manager */ }
///
/// #[async_trait::async_trait]
/// impl TokenStore for Vault {
///     async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
///         Ok(None) // read the session here
///     }
///     async fn save(&self, _tokens: &StoredTokens) -> Result<(), StoreError> {
///         Ok(()) // write it here
///     }
///     async fn clear(&self) -> Result<(), StoreError> {
///         Ok(())
///     }
/// }
///
/// let auth = iqm_auth::IqmAuth::builder()
///     .client_credentials("id", "secret")
///     .workspace_host("acme.iqm.com")
///     .credentials("ops@acme.com", "password")
///     .token_store(std::sync::Arc::new(Vault::default()))
///     .build();
/// assert!(auth.is_ok());
/// ```
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// The stored token set, or `None` if there is none.
    async fn load(&self) -> Result<Option<StoredTokens>, StoreError>;
    /// Replaces the stored token set.
    async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError>;
    /// Forgets the stored token set.
    async fn clear(&self) -> Result<(), StoreError>;
}

/// A [`TokenStore`] in memory: the default, one per layer. Layers in one process share a session
/// best as clones of one `IqmAuth`; several `IqmAuth` of one account given the same store (the
/// same `Arc`) also share it, taking turns to renew.
///
/// ```
/// use std::sync::Arc;
/// use iqm_auth::{MemoryTokenStore, TokenStore};
///
/// let store = Arc::new(MemoryTokenStore::default());
/// # let _ = iqm_auth::IqmAuth::builder().token_store(store.clone() as Arc<dyn TokenStore>);
/// ```
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: parking_lot::Mutex<Option<StoredTokens>>,
}

#[async_trait::async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
        Ok(self.tokens.lock().clone())
    }
    async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError> {
        *self.tokens.lock() = Some(tokens.clone());
        Ok(())
    }
    async fn clear(&self) -> Result<(), StoreError> {
        *self.tokens.lock() = None;
        Ok(())
    }
}

/// Called with every new token set the layer obtains from IQM, for users who keep tokens
/// somewhere of their own. Set with
/// [`IqmAuthBuilder::on_new_tokens`](crate::IqmAuthBuilder::on_new_tokens).
#[derive(Clone)]
pub(crate) struct NewTokensHook(pub(crate) Arc<dyn Fn(&StoredTokens) + Send + Sync>);

impl fmt::Debug for NewTokensHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewTokensHook")
    }
}

#[cfg(feature = "file-store")]
pub use file::FileTokenStore;

#[cfg(feature = "file-store")]
mod file;
