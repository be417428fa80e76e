//! A session that survives restarts: the token store, and the `on_new_tokens` hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use iqm_auth::testing::{FakeIqm, ManualClock};
use iqm_auth::{FileTokenStore, MemoryTokenStore, TokenStore};

use crate::support::{eventually, get_through};

/// A layer for `iqm` that keeps its session in `store`.
fn with_store(iqm: &FakeIqm, store: Arc<dyn TokenStore>) -> iqm_auth::IqmAuth {
    iqm.auth_builder().token_store(store).build().unwrap()
}

#[tokio::test]
async fn a_restarted_process_with_a_valid_stored_session_makes_no_login() {
    let iqm = FakeIqm::start().await.unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::default());
    let first = with_store(&iqm, store.clone());
    assert_eq!(get_through(&iqm, &first).await, 200);
    drop(first);

    let restarted = with_store(&iqm, store);
    assert_eq!(get_through(&iqm, &restarted).await, 200);

    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));
    assert_eq!(restarted.stats().logins, 0);
    assert_eq!(restarted.ow_id(), Some(iqm_auth::testing::OW_ID));
}

#[tokio::test]
async fn a_file_store_survives_a_restart_and_keeps_the_rotated_refresh_token() {
    let iqm = FakeIqm::start().await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("session.json");
    let store = || Arc::new(FileTokenStore::new(&path)) as Arc<dyn TokenStore>;

    let first = with_store(&iqm, store());
    assert_eq!(get_through(&iqm, &first).await, 200);
    // A refresh rotates the refresh token; the store must get the new one.
    first.renew().await.unwrap();
    drop(first);

    // The restarted process finds the access token expired (its clock is an hour ahead) and
    // refreshes with the stored refresh token: the fake refuses the old, rotated-away one.
    let clock = Arc::new(ManualClock::new());
    let restarted = iqm
        .auth_builder()
        .token_store(store())
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(get_through(&iqm, &restarted).await, 200);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(get_through(&iqm, &restarted).await, 200);

    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 2));
    assert_eq!(restarted.stats().store_errors, 0);
}

#[tokio::test]
async fn a_stored_session_whose_access_token_expired_is_renewed_with_its_refresh_token() {
    let iqm = FakeIqm::start().await.unwrap();
    iqm.set_token_lifetime(Duration::from_secs(1));
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::default());
    let first = iqm
        .auth_builder()
        .token_store(store.clone())
        .background_renewal(false)
        .build()
        .unwrap();
    assert_eq!(get_through(&iqm, &first).await, 200);
    drop(first);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let restarted = with_store(&iqm, store);
    assert_eq!(get_through(&iqm, &restarted).await, 200);

    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
}

#[tokio::test]
async fn a_corrupt_store_file_is_reported_ignored_and_then_replaced_with_a_good_session() {
    let iqm = FakeIqm::start().await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("session.json");
    std::fs::write(&path, "{ not json").unwrap();
    let auth = with_store(&iqm, Arc::new(FileTokenStore::new(&path)));

    assert_eq!(get_through(&iqm, &auth).await, 200);

    assert_eq!(iqm.logins(), 1);
    assert_eq!(auth.stats().store_errors, 1);
    let saved = FileTokenStore::new(&path).load().await.unwrap().unwrap();
    assert_eq!(
        saved.access_token.expose(),
        auth.access_token().await.unwrap()
    );
}

#[tokio::test]
async fn an_unreadable_store_costs_a_login_never_a_failed_request() {
    let iqm = FakeIqm::start().await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    // A folder where the file should be: it can be neither read nor replaced.
    let path = folder.path().join("session.json");
    std::fs::create_dir(&path).unwrap();
    let auth = with_store(&iqm, Arc::new(FileTokenStore::new(&path)));

    assert_eq!(get_through(&iqm, &auth).await, 200);

    assert_eq!(iqm.logins(), 1);
    // The save follows the answer: callers do not wait for the store.
    eventually("the load and the save failed", || {
        auth.stats().store_errors == 2
    })
    .await;
    assert!(
        path.is_dir(),
        "the store never deletes what it did not write"
    );
}

#[tokio::test]
async fn logout_clears_the_store() {
    let iqm = FakeIqm::start().await.unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::default());
    let auth = with_store(&iqm, store.clone());
    assert_eq!(get_through(&iqm, &auth).await, 200);
    assert!(store.load().await.unwrap().is_some());

    auth.logout().await.unwrap();

    assert!(store.load().await.unwrap().is_none());
}

#[tokio::test]
async fn on_new_tokens_sees_every_new_token_set_from_iqm() {
    let iqm = FakeIqm::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let auth = iqm
        .auth_builder()
        .on_new_tokens({
            let calls = calls.clone();
            move |tokens| {
                assert_eq!(tokens.ow_id, iqm_auth::testing::OW_ID);
                assert!(tokens.refresh_token.is_some());
                calls.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();

    assert_eq!(get_through(&iqm, &auth).await, 200);
    auth.renew().await.unwrap();
    iqm.revoke_all_access_tokens();
    assert_eq!(get_through(&iqm, &auth).await, 200);

    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
