//! `IqmAuth::status`: what the cache, the token store and the shared session hold, read
//! without an auth call.

use std::sync::Arc;

use iqm_auth::testing::{FakeIqm, OW_ID};
use iqm_auth::{FileTokenStore, LeaseState, MemoryCoordinator, MemoryTokenStore, TokenStore};

#[tokio::test]
async fn a_fresh_layer_sees_the_fleets_set_and_its_store_without_an_auth_call() {
    let iqm = FakeIqm::start().await.unwrap();
    let fleet = MemoryCoordinator::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::default());
    let replica = iqm
        .auth_builder()
        .shared_session(fleet.clone())
        .token_store(store.clone())
        .build()
        .unwrap();
    replica.access_token().await.unwrap();
    let fresh = iqm
        .auth_builder()
        .shared_session(fleet)
        .token_store(store)
        .build()
        .unwrap();

    let status = fresh.status().await;

    assert!(status.cached.is_none());
    let stored = status.stored.unwrap().unwrap();
    assert_eq!(stored.ow_id, OW_ID);
    assert!(stored.is_usable() && stored.has_refresh_token);
    let shared = status.shared.unwrap().unwrap();
    assert_eq!(shared.generation, 1);
    assert!(shared.tokens.unwrap().is_usable());
    assert_eq!((shared.lease, shared.paused_for), (LeaseState::Free, None));
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));

    let cached = replica.status().await.cached.unwrap();
    assert_eq!((cached.ow_id, cached.account_matches), (OW_ID, true));
}

#[tokio::test]
async fn another_accounts_stored_set_does_not_match_and_a_corrupt_store_is_an_error() {
    let iqm = FakeIqm::start().await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("session.json");
    let store = || Arc::new(FileTokenStore::new(&path)) as Arc<dyn TokenStore>;
    iqm.add_user("dev@acme.example", "Dev-Pass-1!");
    let other = iqm
        .auth_builder()
        .credentials("dev@acme.example", "Dev-Pass-1!")
        .token_store(store())
        .build()
        .unwrap();
    other.access_token().await.unwrap();
    let auth = iqm.auth_builder().token_store(store()).build().unwrap();

    let stored = auth.status().await.stored.unwrap().unwrap();
    assert!(!stored.account_matches && !stored.is_usable());

    std::fs::write(&path, b"{\"version\":").unwrap();
    assert!(auth.status().await.stored.is_err());
    assert!(auth.status().await.shared.is_none());
    assert_eq!(iqm.auth_calls(), 1);
}
