//! The token store as a session uses it.
//!
//! Invariants: the store is read before every renewal of this layer's own, so a layer that
//! shares the store with another live layer takes the other's newer set instead of presenting a
//! refresh token the other already spent; layers on one store (the same `Arc`) take turns, one
//! renewal at a time from that read to the save of its outcome; only sets of this layer's
//! account are ever resumed (a foreign one is ignored, warned about once and counted); every new
//! set from IQM is saved with the account's fingerprint.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::error::AuthError;
use crate::store::{NewTokensHook, StoreError, StoredTokens, TokenStore};
use crate::token::{CachedToken, SHARED_UNKNOWN, check_token_bytes};

use super::Session;
use super::refresh::RefreshState;

/// The most a token store may take to load, save or clear.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every layer on one store shares: the turn, held by one renewal at a time from its
/// read of the store to the save of its outcome; and what is known of the refresh tokens the
/// store holds or held (which may be spent), since any layer on it may read them.
#[derive(Debug, Default)]
pub(super) struct StoreShared {
    pub(super) turn: Arc<tokio::sync::Mutex<()>>,
    pub(super) refresh: Mutex<RefreshState>,
}

/// The shared state of every store in use, by the store's address. Every session holds its
/// store and that state together, so while an entry is alive its address names that one store.
static STORES: Mutex<Vec<(usize, Weak<StoreShared>)>> = Mutex::new(Vec::new());

/// The state shared by every layer on `store`.
pub(super) fn shared_by_layers_of(store: &Arc<dyn TokenStore>) -> Arc<StoreShared> {
    let address = Arc::as_ptr(store).cast::<()>() as usize;
    let mut stores = STORES.lock();
    stores.retain(|(_, shared)| shared.strong_count() > 0);
    if let Some(shared) = stores
        .iter()
        .find(|(at, _)| *at == address)
        .and_then(|(_, shared)| shared.upgrade())
    {
        return shared;
    }
    let shared = Arc::new(StoreShared::default());
    stores.push((address, Arc::downgrade(&shared)));
    shared
}

impl Session {
    /// The set the store holds, if it is usable, this account's, newer than `current` (another
    /// layer on the store saved it, or this one before a restart), and not renewed from a
    /// refresh token that may be spent.
    pub(super) async fn newer_stored(
        &self,
        current: Option<&CachedToken>,
    ) -> Option<Arc<CachedToken>> {
        let stored = match self.bounded_store_call(self.store.load()).await {
            Ok(stored) => stored?,
            Err(err) => {
                self.counters.store_error();
                warn!(error = %err, "could not load the stored IQM session");
                return None;
            }
        };
        if current.is_some_and(|current| current.access_token == stored.access_token) {
            return None;
        }
        if !self.account.owns(stored.account.as_deref()) {
            self.counters.foreign_session_ignored();
            if !self.warned_foreign_session.swap(true, Ordering::Relaxed) {
                warn!(
                    "the token store holds a session of another IQM account (or one saved without its account); ignoring it"
                );
            }
            return None;
        }
        // A set whose refresh token was presented, and whose replacement was never saved.
        if stored
            .refresh_token
            .as_ref()
            .is_some_and(|token| self.store_shared.refresh.lock().is_spent(token))
        {
            debug!("the token store holds a set whose refresh token may be spent; ignoring it");
            return None;
        }
        // Older than this layer's own (a save of this layer's failed): not a step back.
        if let Some(current) = current {
            let remaining = current
                .deadlines
                .expires_at
                .saturating_duration_since(self.clock.now());
            if stored.expires_at <= self.clock.wall() + remaining {
                return None;
            }
        }
        let token = self.cached_from_stored(stored);
        if token.is_none() {
            self.counters.store_error();
            warn!("the stored IQM session holds an unusable token; ignoring it");
        }
        token
    }

    /// The cached form of a stored token set, if its tokens can be sent as headers.
    pub(super) fn cached_from_stored(&self, stored: StoredTokens) -> Option<Arc<CachedToken>> {
        let tokens_ok = check_token_bytes(stored.access_token.expose()).is_ok()
            && stored
                .refresh_token
                .as_ref()
                .is_none_or(|t| check_token_bytes(t.expose()).is_ok());
        if !tokens_ok {
            return None;
        }
        let remaining = stored
            .expires_at
            .duration_since(self.clock.wall())
            .unwrap_or(Duration::ZERO);
        let token = self
            .new_cached_token(
                stored.access_token,
                stored.refresh_token,
                stored.ow_id,
                self.clock.now(),
                remaining,
            )
            .ok()?;
        if stored.shared {
            token.set_shared_generation(SHARED_UNKNOWN);
        }
        Some(token)
    }

    /// The stored form of a cached token: its expiry as wall-clock time, and this account's
    /// fingerprint.
    pub(super) fn stored_from_cached(&self, token: &CachedToken) -> StoredTokens {
        let remaining = token
            .deadlines
            .expires_at
            .saturating_duration_since(self.clock.now());
        StoredTokens::new(
            token.access_token.clone(),
            token.refresh_token.clone(),
            token.ow_id,
            self.clock.wall() + remaining,
        )
        .with_account(self.account.as_str())
        .with_shared(token.shared_generation() != 0)
    }

    /// Saves `token`'s set without its refresh token, before that refresh token is presented:
    /// a process that stops or crashes while the refresh is under way must not find it in the
    /// store when it starts again (the list of spent tokens lives in memory). `Err` when the
    /// store could not be written (the refresh token is then not presented) or a logout fenced
    /// the renewal off.
    pub(super) async fn unstore_refresh_token(
        &self,
        token: &CachedToken,
        logout_epoch: u64,
    ) -> Result<(), AuthError> {
        let mut stored = self.stored_from_cached(token);
        stored.refresh_token = None;
        // Under the publishing lock, so that it cannot land after a logout's clear.
        let _publishing = self.publishing.lock().await;
        self.fenced(logout_epoch)?;
        self.bounded_store_call(self.store.save(&stored))
            .await
            .map_err(|err| {
                self.counters.store_error();
                warn!(error = %err, "could not take the refresh token out of the stored IQM session; logging in instead of refreshing");
                AuthError::Interrupted
            })
    }

    /// Hands a new token set from IQM to the store and the `on_new_tokens` hook.
    pub(super) async fn persist(&self, token: &CachedToken) {
        let stored = self.stored_from_cached(token);
        if let Err(err) = self.bounded_store_call(self.store.save(&stored)).await {
            self.counters.store_error();
            warn!(error = %err, "could not save the IQM session");
        }
        if let Some(NewTokensHook(hook)) = &self.on_new_tokens {
            // User code: a panic in it must not abort the renewal, whose token is good.
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&stored))).is_err() {
                self.counters.user_code_panic();
                warn!("the on_new_tokens hook panicked; the new IQM token is used all the same");
            }
        }
    }

    /// A store call, given [`STORE_TIMEOUT`] so that a hanging store cannot hold up renewals,
    /// and isolated so that a panicking store is an error, not an aborted renewal.
    pub(super) async fn bounded_store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(STORE_TIMEOUT, AssertUnwindSafe(call).catch_unwind()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panic)) => {
                self.counters.user_code_panic();
                Err(StoreError::Other("the token store panicked".into()))
            }
            Err(_) => Err(StoreError::Other("timed out".into())),
        }
    }
}
