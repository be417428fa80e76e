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
        }
    }

    /// The same set, marked as belonging to the account with this fingerprint (as read back
    /// from where a store of your own keeps it).
    #[must_use]
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
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
mod file {
    use std::fs;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use parking_lot::Mutex;

    use serde::{Deserialize, Serialize};

    use super::{StoreError, StoredTokens, TokenStore};
    use crate::secret::Secret;

    /// A [`TokenStore`] in a JSON file, written atomically (a temporary file of its own in the
    /// same folder, then a rename) and, on Unix, readable and writable by its owner only
    /// (`0600`).
    ///
    /// Saves and clears land in the order they were called, even when one outlives the layer's
    /// time limit for store calls and finishes late: a late save never replaces a newer set (a
    /// rotated refresh token), and a late save never undoes a logout's clear. Clones share that
    /// order; two stores built separately for one file do not.
    ///
    /// The file holds the tokens in clear: keep it where only the service's user can read it.
    /// An unreadable or corrupt file is reported and left alone; the layer then logs in and
    /// writes a good one over it.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use iqm_auth::{FileTokenStore, IqmAuth};
    ///
    /// let auth = IqmAuth::builder()
    ///     // …credentials…
    ///     .token_store(Arc::new(FileTokenStore::new("/var/lib/my-service/iqm-session.json")))
    /// #   ;
    /// ```
    #[derive(Debug, Clone)]
    #[cfg_attr(docsrs, doc(cfg(feature = "file-store")))]
    pub struct FileTokenStore {
        path: PathBuf,
        order: Arc<WriteOrder>,
    }

    /// Numbers every save and clear when it is called; the file only ever moves forward.
    #[derive(Debug, Default)]
    struct WriteOrder {
        called: AtomicU64,
        /// The number of the latest save or clear that reached the file; held while writing.
        landed: Mutex<u64>,
    }

    impl WriteOrder {
        /// Runs `write`, numbered `number`, unless a later call has already landed.
        fn land(
            &self,
            number: u64,
            write: impl FnOnce() -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            let mut landed = self.landed.lock();
            if *landed > number {
                return Ok(());
            }
            write()?;
            *landed = number;
            Ok(())
        }
    }

    impl FileTokenStore {
        /// A store in the file at `path` (created on the first save; its folder must exist).
        pub fn new(path: impl Into<PathBuf>) -> Self {
            Self {
                path: path.into(),
                order: Arc::default(),
            }
        }

        /// The number of a save or clear called now.
        fn next_number(&self) -> u64 {
            self.order.called.fetch_add(1, Ordering::Relaxed) + 1
        }

        /// The file's path.
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    /// The file's format. `version` lets a later format be told apart: 2 added `account`, and a
    /// file of version 1 reads as a set without one (which the layer does not resume).
    #[derive(Serialize, Deserialize)]
    struct OnDisk {
        version: u32,
        access_token: String,
        refresh_token: Option<String>,
        ow_id: u64,
        expires_at_unix_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
    }

    const FORMAT_VERSION: u32 = 2;

    impl OnDisk {
        fn from_tokens(tokens: &StoredTokens) -> Self {
            let since_epoch = tokens
                .expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            Self {
                version: FORMAT_VERSION,
                access_token: tokens.access_token.expose().to_owned(),
                refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose().to_owned()),
                ow_id: tokens.ow_id,
                expires_at_unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
                account: tokens.account.clone(),
            }
        }

        fn into_tokens(self) -> Result<StoredTokens, StoreError> {
            if !(1..=FORMAT_VERSION).contains(&self.version) {
                return Err(StoreError::Corrupt(format!(
                    "unknown format version {}",
                    self.version
                )));
            }
            let expires_at = UNIX_EPOCH
                .checked_add(Duration::from_millis(self.expires_at_unix_ms))
                .ok_or_else(|| StoreError::Corrupt("expiry out of range".into()))?;
            let tokens = StoredTokens::new(
                Secret::new(self.access_token),
                self.refresh_token.map(Secret::new),
                self.ow_id,
                expires_at,
            );
            Ok(match self.account {
                Some(account) => tokens.with_account(account),
                None => tokens,
            })
        }
    }

    fn read(path: &Path) -> Result<Option<StoredTokens>, StoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        // serde_json's message names a position and an expectation, never the content.
        let on_disk: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        on_disk.into_tokens().map(Some)
    }

    fn write(path: &Path, tokens: &StoredTokens) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&OnDisk::from_tokens(tokens))
            .map_err(|e| StoreError::Other(Box::new(e)))?;
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // A temporary file of this write's own (created 0600 on Unix), removed if the write
        // fails; only the rename touches the store itself.
        let mut temporary = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(folder)?;
        temporary.write_all(&json)?;
        temporary.as_file().sync_all()?;
        temporary.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    fn remove(path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?
    }

    #[async_trait::async_trait]
    impl TokenStore for FileTokenStore {
        async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
            let path = self.path.clone();
            blocking(move || read(&path)).await
        }
        async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError> {
            let number = self.next_number();
            let (path, tokens, order) = (self.path.clone(), tokens.clone(), self.order.clone());
            blocking(move || order.land(number, || write(&path, &tokens))).await
        }
        async fn clear(&self) -> Result<(), StoreError> {
            let number = self.next_number();
            let (path, order) = (self.path.clone(), self.order.clone());
            blocking(move || order.land(number, || remove(&path))).await
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::SystemTime;

        fn tokens() -> StoredTokens {
            StoredTokens::new(
                Secret::new("access"),
                Some(Secret::new("refresh")),
                200_001,
                UNIX_EPOCH + Duration::from_millis(1_900_000_000_123),
            )
            .with_account("0123456789abcdef0123456789abcdef")
        }

        #[tokio::test]
        async fn a_file_of_the_first_format_reads_as_a_set_without_an_account() {
            let folder = tempfile::tempdir().unwrap();
            let path = folder.path().join("session.json");
            fs::write(
                &path,
                br#"{"version":1,"access_token":"a","refresh_token":null,"ow_id":7,"expires_at_unix_ms":0}"#,
            )
            .unwrap();
            let loaded = FileTokenStore::new(&path).load().await.unwrap().unwrap();
            assert_eq!(loaded.account, None);
            assert_eq!(loaded.ow_id, 7);
        }

        #[tokio::test]
        async fn a_saved_session_loads_back_unchanged() {
            let folder = tempfile::tempdir().unwrap();
            let store = FileTokenStore::new(folder.path().join("session.json"));
            assert_eq!(store.load().await.unwrap(), None);
            store.save(&tokens()).await.unwrap();
            assert_eq!(store.load().await.unwrap(), Some(tokens()));
            store.clear().await.unwrap();
            assert_eq!(store.load().await.unwrap(), None);
            store.clear().await.unwrap();
        }

        #[cfg(unix)]
        #[tokio::test]
        async fn the_file_is_readable_by_its_owner_only() {
            use std::os::unix::fs::PermissionsExt;
            let folder = tempfile::tempdir().unwrap();
            let store = FileTokenStore::new(folder.path().join("session.json"));
            store.save(&tokens()).await.unwrap();
            let mode = fs::metadata(store.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // Nothing else is left in the folder: the temporary file was renamed.
            assert_eq!(fs::read_dir(folder.path()).unwrap().count(), 1);
        }

        #[tokio::test]
        async fn a_corrupt_file_is_an_error_and_is_left_alone() {
            let folder = tempfile::tempdir().unwrap();
            let path = folder.path().join("session.json");
            fs::write(&path, b"{\"version\":1,\"access_tok").unwrap();
            let store = FileTokenStore::new(&path);
            assert!(matches!(store.load().await, Err(StoreError::Corrupt(_))));
            assert_eq!(fs::read(&path).unwrap(), b"{\"version\":1,\"access_tok");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn saves_land_in_the_order_they_were_called() {
            let folder = tempfile::tempdir().unwrap();
            let store = FileTokenStore::new(folder.path().join("session.json"));
            let set = |n: u64| {
                StoredTokens::new(
                    Secret::new(format!("access-{n}")),
                    Some(Secret::new(format!("refresh-{n}"))),
                    n,
                    UNIX_EPOCH + Duration::from_secs(n),
                )
            };
            let sets: Vec<StoredTokens> = (1..=64).map(set).collect();
            // Called in order (join_all polls them in order), run on the blocking pool in any
            // order: the newest set must win, and no temporary file may be left.
            let saves = sets.iter().map(|tokens| store.save(tokens));
            for result in futures_util::future::join_all(saves).await {
                result.unwrap();
            }
            assert_eq!(store.load().await.unwrap(), Some(set(64)));
            assert_eq!(fs::read_dir(folder.path()).unwrap().count(), 1);

            let newest = set(65);
            let (save, clear) = (store.save(&newest), store.clear());
            let (saved, cleared) = tokio::join!(save, clear);
            saved.unwrap();
            cleared.unwrap();
            assert_eq!(store.load().await.unwrap(), None);
        }

        #[test]
        fn remaining_is_zero_once_expired() {
            let expired = StoredTokens::new(Secret::new("a"), None, 1, SystemTime::UNIX_EPOCH);
            assert_eq!(expired.remaining(), Duration::ZERO);
        }
    }
}
