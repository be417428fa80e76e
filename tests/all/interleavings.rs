//! Interleavings found in review, each as the behaviour the promises require: a spent refresh
//! token never presented by another layer on the store, nor after a failed save; a refusing
//! endpoint that also serves; a token kept while renewals pause; a logout that fences the fleet.
//! Each failed before its fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iqm_auth::testing::{Answer, FakeIqm};
use iqm_auth::{
    CallAllowance, CoordinatorError, Failure, Lease, MemoryCoordinator, MemoryTokenStore,
    Publication, SessionCoordinator, SharedTokens, StoreError, StoredTokens, TokenStore,
};

use crate::support::{Harness, auth_error, get_through};

// What may be spent is known to every layer on the store, not only to the one that spent it.
#[tokio::test]
async fn a_second_layer_never_presents_a_refresh_token_the_first_spent() {
    let iqm = FakeIqm::start().await.unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::default());
    let layer = || {
        iqm.auth_builder()
            .token_store(store.clone())
            .auth_timeout(Duration::from_millis(200))
            .auth_attempts(1)
            .background_renewal(false)
            .build()
            .unwrap()
    };
    let (a, b) = (layer(), layer());
    assert_eq!(get_through(&iqm, &a).await, 200);
    assert_eq!(get_through(&iqm, &b).await, 200, "B resumes A's stored set");
    assert_eq!(iqm.logins(), 1);

    // A's refresh: IQM rotates, the answer is lost; A's login fails too (an IQM incident).
    iqm.hold_refresh_answers(Duration::from_millis(400));
    iqm.set_login_answer(Answer::Status(503));
    assert!(a.renew().await.is_err());
    assert_eq!(iqm.refreshes(), 1);

    // IQM recovers; B renews.
    iqm.hold_refresh_answers(Duration::ZERO);
    iqm.set_login_answer(Answer::Normal);
    b.renew().await.unwrap();
    assert_eq!(
        iqm.refresh_reuses(),
        0,
        "B presented the refresh token A had spent"
    );
    // A: 1 login, the lost refresh, 1 failed login (503); B: logs in, its copy being spent.
    assert_eq!((iqm.logins(), iqm.refreshes()), (3, 1));
}

/// A store whose saves of a renewed set can be made to fail (a full disk, a write that times
/// out), while loads work. The layer's save of a set without its refresh token, made before
/// that token is presented, still lands: so the store ends up holding an older set.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryTokenStore,
    fail_saves: AtomicBool,
}

#[async_trait::async_trait]
impl TokenStore for Flaky {
    async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
        self.inner.load().await
    }
    async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError> {
        if tokens.refresh_token.is_some() && self.fail_saves.load(Ordering::SeqCst) {
            return Err(StoreError::Other("unavailable".into()));
        }
        self.inner.save(tokens).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }
}

// A store that keeps an older set (its saves fail) is never stepped back to.
#[tokio::test]
async fn a_stale_stored_set_is_never_refreshed_after_its_token_was_spent() {
    let iqm = FakeIqm::start().await.unwrap();
    iqm.set_token_lifetime(Duration::from_secs(1));
    let store = Arc::new(Flaky::default());
    let auth = iqm
        .auth_builder()
        .token_store(store.clone())
        .background_renewal(false)
        .build()
        .unwrap();
    assert_eq!(get_through(&iqm, &auth).await, 200);
    store.fail_saves.store(true, Ordering::SeqCst); // from now on the store keeps older sets
    tokio::time::sleep(Duration::from_millis(1100)).await; // the stored set expires
    // The 10th renewal: the stored set's refresh token has left the 8-entry spent memory.
    for _ in 0..10 {
        auth.renew().await.unwrap();
    }
    assert_eq!(
        iqm.refresh_reuses(),
        0,
        "the stored set's spent refresh token was presented again"
    );
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 10));
}

// A proof of refusal survives the same path serving another workspace or resource.
#[tokio::test]
async fn a_refusing_endpoint_costs_one_renewal_not_one_per_refused_request() {
    let (h, _clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    for round in 0..5 {
        // Workspace B may not use /api/v3/campaigns (401 whatever the token; the first time
        // the replay is refused too, which proves it) ...
        h.iqm.queue_api_answers(if round == 0 {
            vec![401, 401]
        } else {
            vec![401]
        });
        assert_eq!(h.get("/api/v3/campaigns").await.unwrap(), 401);
        // ... workspace A may (the same path answers 200), which does not undo the proof.
        assert_eq!(h.get("/api/v3/campaigns").await.unwrap(), 200);
    }
    assert_eq!(
        (h.iqm.logins(), h.iqm.refreshes()),
        (1, 1),
        "one renewal, not one per refused request"
    );
}

// A token refused while renewals pause is used again: no renewal is coming to replace it.
#[tokio::test]
async fn a_401_while_renewals_pause_does_not_fail_later_requests_with_a_working_token() {
    let h = Harness::with(|b| b.replay_unauthorized(false).background_renewal(false)).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    // A renewal fails (refresh and login refused): renewals cool down 30 s. The token is good.
    h.iqm.set_refresh_answer(Answer::Status(400));
    h.iqm.set_login_answer(Answer::Status(403));
    assert!(h.auth.renew().await.is_err());
    assert_eq!(h.get("/x").await.unwrap(), 200);

    h.iqm.queue_api_answers([401]); // one 401 (say, the first from a refusing endpoint)
    assert_eq!(h.get("/x").await.unwrap(), 401);
    let next = h.get("/x").await;
    assert!(
        matches!(next, Ok(200)),
        "the cached token still works, yet: {next:?}"
    );
}

// A refresh grant IQM refuses every time rests, so it never spends the budget the login needs.
#[tokio::test]
async fn a_refused_refresh_grant_never_fails_a_request_while_login_works() {
    let (h, _clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::Status(400)); // e.g. the client may not use the grant
    for i in 0..5 {
        h.iqm.revoke_all_access_tokens();
        let status = h.get("/x").await;
        assert!(matches!(status, Ok(200)), "revocation {i}: {status:?}");
    }
    // One refused refresh; the grant then rests, and each revocation costs one login.
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1 + 5, 1));
}

/// A coordinator with a namespace the user chose, over a `MemoryCoordinator`.
#[derive(Debug, Clone)]
struct Named(MemoryCoordinator);

#[async_trait::async_trait]
impl SessionCoordinator for Named {
    fn namespace(&self) -> Option<&str> {
        Some("acme")
    }
    fn lease_ttl(&self) -> Duration {
        self.0.lease_ttl()
    }
    async fn read(&self, s: &str) -> Result<Option<SharedTokens>, CoordinatorError> {
        self.0.read(s).await
    }
    async fn try_lease(&self, s: &str, l: &Lease) -> Result<bool, CoordinatorError> {
        self.0.try_lease(s, l).await
    }
    async fn mark_refreshing(&self, s: &str, l: &Lease, g: u64) -> Result<bool, CoordinatorError> {
        self.0.mark_refreshing(s, l, g).await
    }
    async fn publish(
        &self,
        s: &str,
        l: &Lease,
        p: &Publication,
    ) -> Result<Option<u64>, CoordinatorError> {
        self.0.publish(s, l, p).await
    }
    async fn record_failure(
        &self,
        s: &str,
        l: &Lease,
        f: &Failure,
    ) -> Result<(), CoordinatorError> {
        self.0.record_failure(s, l, f).await
    }
    async fn reserve_call(
        &self,
        s: &str,
        c: &str,
        a: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        self.0.reserve_call(s, c, a).await
    }
    async fn refund_call(
        &self,
        s: &str,
        c: &str,
        a: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        self.0.refund_call(s, c, a).await
    }
    async fn release(&self, s: &str, l: &Lease) -> Result<(), CoordinatorError> {
        self.0.release(s, l).await
    }
    async fn clear(&self, s: &str) -> Result<(), CoordinatorError> {
        self.0.clear(s).await
    }
}

// A 401-driven renewal never adopts the store's older set, whose replay would be refused too.
#[tokio::test]
async fn a_revocation_with_a_stale_stored_set_fails_no_request() {
    let iqm = FakeIqm::start().await.unwrap();
    let store = Arc::new(Flaky::default());
    let auth = iqm
        .auth_builder()
        .token_store(store.clone())
        .background_renewal(false)
        .build()
        .unwrap();
    assert_eq!(get_through(&iqm, &auth).await, 200); // login: saved
    store.fail_saves.store(true, Ordering::SeqCst);
    auth.renew().await.unwrap(); // refresh: its save fails, the store keeps the older set (without its refresh token)
    iqm.revoke_all_access_tokens();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_through(&iqm, &auth).await);
    }
    assert_eq!(statuses, [200, 200, 200], "logins {}", iqm.logins());
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 2));
}

// A renewal a logout fenced off publishes nothing to the fleet's shared session either.
#[tokio::test]
async fn a_renewal_fenced_by_logout_publishes_nothing_to_the_fleet() {
    let iqm = FakeIqm::start().await.unwrap();
    let fleet = Named(MemoryCoordinator::default());
    let layer = || {
        iqm.auth_builder()
            .shared_session(fleet.clone())
            .background_renewal(false)
            .build()
            .unwrap()
    };
    let (a, b) = (layer(), layer());
    assert_eq!(get_through(&iqm, &a).await, 200);
    assert_eq!(get_through(&iqm, &b).await, 200);
    assert_eq!(iqm.logins(), 1);

    // B takes the lease and refreshes slowly; A's renewal waits for B's set.
    iqm.set_refresh_delay(Duration::from_millis(500));
    let b_renewal = tokio::spawn({
        let b = b.clone();
        async move { b.renew().await }
    });
    crate::support::eventually("B's refresh reached IQM", || iqm.refreshes() == 1).await;
    let a_renewal = tokio::spawn({
        let a = a.clone();
        async move { a.renew().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.logout().await.unwrap();

    let _ = b_renewal.await.unwrap();
    let fenced = a_renewal.await.unwrap();
    let shared = fleet.read("acme").await.unwrap();
    assert!(
        shared.as_ref().and_then(|s| s.tokens.as_ref()).is_none(),
        "the fenced renewal ({fenced:?}) published a set after the logout: {shared:?}, logins {}",
        iqm.logins()
    );
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
}

// One failed save, with IQM healthy throughout, makes no other layer present a spent token.
#[tokio::test]
async fn one_failed_save_never_makes_the_other_layer_present_a_spent_refresh_token() {
    let iqm = FakeIqm::start().await.unwrap();
    let store = Arc::new(Flaky::default());
    let layer = || {
        iqm.auth_builder()
            .token_store(store.clone())
            .background_renewal(false)
            .build()
            .unwrap()
    };
    let (a, b) = (layer(), layer());
    assert_eq!(get_through(&iqm, &a).await, 200);
    assert_eq!(get_through(&iqm, &b).await, 200);
    store.fail_saves.store(true, Ordering::SeqCst);
    a.renew().await.unwrap(); // refreshed; the save fails
    store.fail_saves.store(false, Ordering::SeqCst);
    b.renew().await.unwrap();
    assert_eq!(
        iqm.refresh_reuses(),
        0,
        "B presented the refresh token A spent"
    );
    // B finds its refresh token spent (A presented it) and logs in.
    assert_eq!((iqm.logins(), iqm.refreshes()), (2, 1));
}

// Found by reverting each fix in place: the paths no other test reached.

/// The lost answer's token stays spent even when the login that follows fails and the old set
/// stays cached.
#[tokio::test]
async fn a_lost_refresh_answer_with_login_down_never_presents_the_token_again() {
    let (h, clock) = Harness::with_manual_clock_and(|b| {
        b.background_renewal(false)
            .auth_timeout(Duration::from_millis(200))
    })
    .await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // IQM rotates, the answer is lost, and the fallback login fails: the old set stays cached.
    h.iqm.hold_refresh_answers(Duration::from_millis(500));
    h.iqm.set_login_answer(Answer::Status(503));
    assert!(h.auth.renew().await.is_err());
    h.iqm.hold_refresh_answers(Duration::ZERO);
    h.iqm.set_login_answer(Answer::Normal);

    // Past the refresh grant's rest, the budget's minute and any pause.
    clock.advance(Duration::from_secs(90));
    h.auth.renew().await.unwrap();
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(
        h.iqm.refresh_reuses(),
        0,
        "a spent refresh token was presented"
    );
    assert_eq!(h.iqm.refreshes(), 1);
}

/// A token refused while renewals pause is trusted again: no renewal is coming to replace it.
#[tokio::test]
async fn a_401_while_renewals_are_paused_leaves_the_valid_token_in_use() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    // Refused credentials pause renewals (a 429 would hold back the API requests too).
    h.iqm.set_refresh_answer(Answer::Status(400));
    h.iqm.set_login_answer(Answer::Status(403));
    assert!(
        h.auth.renew().await.is_err(),
        "renewals now paused for the cool-down, 30 s"
    );

    // One 401 (an endpoint's, not a revocation) while renewals are paused.
    h.iqm.queue_api_answers([401]);
    let _ = h.get("/forbidden").await;

    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(h.get("/x").await.map_err(|e| auth_error(&e).to_string()));
        clock.advance(Duration::from_secs(1));
    }
    assert!(outcomes.iter().all(|o| *o == Ok(200)), "{outcomes:?}");
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

/// A token refused whose renewal failed is trusted again, at no further auth call.
#[tokio::test]
async fn a_401_whose_renewal_fails_leaves_the_valid_token_in_use_at_no_further_call() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::Status(503));
    h.iqm.set_login_answer(Answer::Status(503));

    // One 401 (an endpoint's, not a revocation); its renewal fails.
    h.iqm.queue_api_answers([401]);
    assert!(h.get("/forbidden").await.is_err());
    let calls = h.iqm.auth_calls();

    let outcome = h.get("/x").await.map_err(|e| auth_error(&e).to_string());
    assert_eq!(outcome, Ok(200));
    assert_eq!(
        h.iqm.auth_calls(),
        calls,
        "auth calls after the failed renewal"
    );
}

/// The path where the request first waited for a token hands its 401 back at once too.
#[tokio::test]
async fn with_replay_off_a_401_to_a_waited_for_token_is_handed_back_at_once() {
    let (h, announced) = Harness::counting_new_tokens(|b| b.replay_unauthorized(false)).await;
    h.iqm.set_refresh_delay(Duration::from_secs(2));
    // The first request waits for the login, then its token is refused.
    h.iqm.queue_api_answers([401]);

    assert_eq!(h.get("/x").await.unwrap(), 401);
    assert_eq!(
        announced.load(Ordering::SeqCst),
        1,
        "the 401 waited for its renewal to finish"
    );
    crate::support::eventually("the renewal finished", || {
        announced.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
}

/// Found by the simulator (seed 11): a process that crashed mid-refresh found the refresh token
/// it had presented in its store on restart, and presented it again. It leaves the store first.
#[tokio::test]
async fn a_refresh_token_is_out_of_the_store_while_it_is_presented() {
    let store = Arc::new(MemoryTokenStore::default());
    let h = Harness::with({
        let store = store.clone();
        move |b| b.token_store(store)
    })
    .await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let before = store.load().await.unwrap().unwrap();
    assert!(before.refresh_token.is_some());

    h.iqm.set_refresh_delay(Duration::from_millis(300));
    let renewal = tokio::spawn({
        let auth = h.auth.clone();
        async move { auth.renew().await }
    });
    crate::support::eventually("the refresh reached IQM", || h.iqm.refreshes() == 1).await;
    let during = store.load().await.unwrap().unwrap();
    assert_eq!(during.access_token, before.access_token);
    assert_eq!(during.refresh_token, None, "presented while still stored");

    renewal.await.unwrap().unwrap();
    let after = store.load().await.unwrap().unwrap();
    assert!(after.refresh_token.is_some());
    assert_ne!(after.refresh_token, before.refresh_token);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 1));
}
