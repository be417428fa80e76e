//! `FileTokenStore`: the session in a JSON file (feature `file-store`).

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

/// The file's format. `version` lets a later format be told apart: 2 added `account` (a file of
/// version 1 reads as a set without one, which the layer does not resume); 3 added `shared`
/// (a file of an earlier version reads as a set that was not shared).
#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    access_token: String,
    refresh_token: Option<String>,
    ow_id: u64,
    expires_at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(default)]
    shared: bool,
}

const FORMAT_VERSION: u32 = 3;

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
            shared: tokens.shared,
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
        )
        .with_shared(self.shared);
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
