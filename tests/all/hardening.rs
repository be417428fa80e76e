//! The hardening issue: each defect found in review, as the behaviour that must hold, and the
//! budget for failed auth calls that keeps every fault within IQM's rate limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use iqm_auth::testing::{Answer, EMAIL, FakeIqm};
use iqm_auth::{AuthError, FailureClass, MemoryTokenStore, StoreError, StoredTokens, TokenStore};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Captured, Harness, auth_error, client_with, eventually};

const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_logout_fences_off_a_renewal_in_flight() {
    let store = Arc::new(MemoryTokenStore::default());
    let announced = Arc::new(AtomicUsize::new(0));
    let h = Harness::with({
        let (store, announced) = (store.clone(), announced.clone());
        move |b| {
            b.token_store(store).on_new_tokens(move |_| {
                announced.fetch_add(1, Ordering::SeqCst);
            })
        }
    })
    .await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_delay(Duration::from_millis(300));

    let renewal = tokio::spawn({
        let auth = h.auth.clone();
        async move { auth.renew().await }
    });
    eventually("the refresh reached IQM", || h.iqm.refreshes() == 1).await;
    h.auth.logout().await.unwrap();
    let renewed = renewal.await.unwrap();

    assert!(matches!(renewed, Err(AuthError::LoggedOut)), "{renewed:?}");
    assert_eq!(h.auth.ow_id(), None, "the renewal's token was not cached");
    assert_eq!(store.load().await.unwrap(), None, "nor saved");
    assert_eq!(announced.load(Ordering::SeqCst), 1, "nor announced");
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
    assert_eq!(announced.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_logout_fences_off_the_background_renewers_early_refresh() {
    let (h, clock) = Harness::with_manual_clock(true).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_delay(Duration::from_millis(300));

    clock.advance(HOUR - Duration::from_secs(30));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    eventually("the early refresh reached IQM", || h.iqm.refreshes() == 1).await;
    h.auth.logout().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(h.auth.ow_id(), None);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

#[tokio::test]
async fn a_401_that_is_not_the_tokens_fault_costs_one_renewal_not_one_per_request() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // An endpoint the user may not access: 401 whatever the token (10 requests, 1 replay).
    h.iqm.queue_api_answers([401; 11]);
    for _ in 0..10 {
        assert_eq!(h.get("/forbidden").await.unwrap(), 401);
    }
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 1));
    let stats = h.auth.stats();
    assert_eq!(
        (stats.unauthorized_replays, stats.unauthorized_not_renewed),
        (1, 9)
    );

    // Past the window such a 401 renews again, once.
    clock.advance(Duration::from_secs(10));
    h.iqm.queue_api_answers([401; 2]);
    assert_eq!(h.get("/forbidden").await.unwrap(), 401);
    assert_eq!(h.iqm.refreshes(), 2);

    // Once the new token has served a request, a 401 is a revocation: recovered at once.
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.refreshes(), 3);
}

#[tokio::test]
async fn revocations_every_second_under_steady_traffic_fail_no_request() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    for _ in 0..10 {
        h.iqm.revoke_all_access_tokens();
        for _ in 0..3 {
            assert_eq!(h.get("/x").await.unwrap(), 200);
        }
        clock.advance(SECOND);
    }

    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 10));
    assert_eq!(h.auth.stats().unauthorized_not_renewed, 0);
}

#[test]
fn an_expired_token_is_not_sent_after_the_renewers_runtime_shut_down() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let iqm = main.block_on(FakeIqm::start()).unwrap();
    iqm.set_token_lifetime(Duration::from_secs(2));
    let auth = iqm
        .auth_builder()
        .replay_unauthorized(false)
        .build()
        .unwrap();

    // The first runtime logs in and runs the background renewer; then it shuts down.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(auth.access_token()).unwrap();
    drop(first);

    main.block_on(async {
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let response = client_with(&auth).get(iqm.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    });
    assert_eq!(iqm.unauthorized(), 0);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
}

#[tokio::test]
async fn a_panicking_hook_or_store_costs_no_extra_login() {
    let h = Harness::with(|b| b.on_new_tokens(|_| panic!("the hook panics"))).await;
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    h.auth.renew().await.unwrap();
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 1));
    assert_eq!(h.auth.stats().user_code_panics, 2);

    #[derive(Debug)]
    struct PanickingStore;
    #[async_trait::async_trait]
    impl TokenStore for PanickingStore {
        async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
            panic!("load panics")
        }
        async fn save(&self, _: &StoredTokens) -> Result<(), StoreError> {
            panic!("save panics")
        }
        async fn clear(&self) -> Result<(), StoreError> {
            panic!("clear panics")
        }
    }
    let h = Harness::with(|b| b.token_store(Arc::new(PanickingStore))).await;
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    h.auth.logout().await.unwrap();
    let stats = h.auth.stats();
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!((stats.user_code_panics, stats.store_errors), (3, 3));
}

#[tokio::test]
async fn a_wrong_password_with_an_endless_cool_down_costs_one_login() {
    let h = Harness::with(|b| {
        b.credentials(EMAIL, "wrong password")
            .rejection_cool_down(Duration::MAX)
            .max_rejection_cool_down(Duration::MAX)
    })
    .await;
    for _ in 0..10 {
        let err = h.get("/x").await.unwrap_err();
        assert_eq!(auth_error(&err).status(), Some(StatusCode::FORBIDDEN));
    }
    assert_eq!(h.iqm.logins(), 1);
}

#[tokio::test]
async fn a_wrong_password_for_an_hour_costs_eight_logins() {
    let (h, clock) =
        Harness::with_manual_clock_and(|b| b.credentials(EMAIL, "wrong password")).await;

    // A request every 10 s for an hour.
    for _ in 0..360 {
        let err = h.get("/x").await.unwrap_err();
        assert_eq!(auth_error(&err).class(), FailureClass::Rejected);
        clock.advance(Duration::from_secs(10));
    }

    // Cool-downs of 30 s doubling to 15 min: logins at 0, 30, 90, 210, 450, 930, 1830, 2730 s.
    assert_eq!(h.iqm.logins(), 8);
    assert_eq!(h.iqm.api_calls(), 0);
}

#[tokio::test]
async fn a_transient_status_with_a_large_body_is_still_transient() {
    let h = Harness::start().await;
    h.iqm.queue_login_answers([Answer::Page {
        status: 503,
        size: 200 * 1024,
        retry_after: Some(1),
    }]);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 2);

    let h = Harness::start().await;
    h.iqm.set_login_answer(Answer::Page {
        status: 429,
        size: 200 * 1024,
        retry_after: Some(60),
    });
    let err = h.get("/x").await.unwrap_err();
    let err = auth_error(&err);
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!(err.class(), FailureClass::Transient);
    assert_eq!(h.iqm.logins(), 1);
}

#[test]
fn a_waiter_on_a_renewal_whose_runtime_died_starts_a_new_one() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let iqm = main.block_on(FakeIqm::start()).unwrap();
    iqm.set_login_delay(Duration::from_millis(300));
    let auth = iqm.auth_builder().build().unwrap();

    // A second runtime starts the login; a task on the main runtime joins it.
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _started = doomed.spawn({
        let auth = auth.clone();
        async move { auth.access_token().await }
    });
    doomed.block_on(async {
        while iqm.logins() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let waiter = main.spawn({
        let auth = auth.clone();
        async move { auth.access_token().await }
    });
    main.block_on(eventually("the waiter joined", || {
        auth.stats().shared_waits == 1
    }));
    drop(doomed);

    let token = main.block_on(waiter).unwrap();
    assert!(token.is_ok(), "{token:?}");
    assert_eq!(iqm.logins(), 2);
}

#[tokio::test]
async fn a_failing_refresh_endpoint_gives_way_to_a_login_and_rests() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::Status(503));

    // While the token is valid: one refresh try, then a login, in the same renewal.
    clock.advance(HOUR - Duration::from_secs(30));
    h.auth.renew().await.unwrap();
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));

    // For the next 30 s the refresh grant rests: renewals log in.
    clock.advance(Duration::from_secs(20));
    h.auth.renew().await.unwrap();
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (3, 1));

    // Then it is tried again, and once it works it is used.
    h.iqm.set_refresh_answer(Answer::Normal);
    clock.advance(Duration::from_secs(10));
    h.auth.renew().await.unwrap();
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (3, 2));
    assert_eq!(h.iqm.refresh_reuses(), 0);
}

/// Every fault of the matrix, 30 s each, cycled for ten minutes of manual-clock time with a
/// request every second: the failed auth calls IQM receives stay within the budget.
#[tokio::test]
async fn ten_minutes_of_every_fault_stay_within_ten_failed_auth_calls_a_minute() {
    let (h, clock) = Harness::with_manual_clock_and(|b| b.background_renewal(false)).await;
    h.iqm.set_token_lifetime(Duration::from_secs(20));
    let faults = [
        Answer::Status(503),
        Answer::Normal,
        Answer::Status(500),
        Answer::StatusRetryAfter(429, 1),
        Answer::Normal,
        Answer::StatusRetryAfter(503, 120),
        Answer::Status(429),
        Answer::TruncatedJson,
        Answer::Normal,
        Answer::Html,
        Answer::ErrorEnvelope,
        Answer::MissingAccessToken,
        Answer::Normal,
        Answer::EmptyAccessToken,
        Answer::HeaderInjection,
        Answer::MissingOwId,
        Answer::Normal,
        Answer::ResetMidBody,
        Answer::Page {
            status: 502,
            size: 100 * 1024,
            retry_after: None,
        },
        Answer::Status(403),
    ];
    let mut failed_by_second = Vec::new();
    for second in 0..600 {
        if second % 30 == 0 {
            let fault = faults[second / 30 % faults.len()].clone();
            h.iqm.set_login_answer(fault.clone());
            h.iqm.set_refresh_answer(fault);
        }
        let _ = h.get("/x").await;
        failed_by_second.push(h.iqm.failed_auth_calls());
        clock.advance(SECOND);
    }

    let busiest_minute = (0..failed_by_second.len())
        .map(|start| {
            let end = (start + 59).min(failed_by_second.len() - 1);
            let before = if start == 0 {
                0
            } else {
                failed_by_second[start - 1]
            };
            failed_by_second[end] - before
        })
        .max();
    assert_eq!(
        busiest_minute,
        Some(10),
        "the budget is what bounds the busiest minute"
    );
    assert!(
        h.iqm.failed_auth_calls() >= 40,
        "{}",
        h.iqm.failed_auth_calls()
    );
    assert_eq!(h.iqm.refresh_reuses(), 0);
}

#[tokio::test]
async fn while_the_budget_is_spent_callers_learn_when_the_next_call_is_allowed() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_login_answer(Answer::Status(503));
    assert!(h.get("/x").await.is_err());
    assert_eq!(h.iqm.logins(), 3);

    clock.advance(SECOND);
    let err = h.get("/x").await.unwrap_err();
    let err = auth_error(&err);
    assert!(
        matches!(err, AuthError::CallBudgetExhausted { retry_after } if *retry_after == Duration::from_secs(5)),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(h.iqm.logins(), 3);

    h.iqm.set_login_answer(Answer::Normal);
    clock.advance(Duration::from_secs(5));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 4);
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_all_its_life_under_default_settings() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_token_lifetime(Duration::from_secs(2));
    for _ in 0..60 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
        clock.advance(SECOND);
    }
    // Each token is used at 1 s (fresh: its renewal point is 1.5 s) and expires at 2 s, where
    // the request renews it: one refresh every 2 s, none held back by the failed-call budget.
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 29));
    assert_eq!(h.iqm.unauthorized(), 0);
}

#[tokio::test]
async fn a_429_without_retry_after_pauses_renewals_for_ten_seconds() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_login_answer(Answer::Status(429));
    assert!(h.get("/x").await.is_err());
    assert_eq!(h.iqm.logins(), 1, "a 429 is not retried within the renewal");

    h.iqm.set_login_answer(Answer::Normal);
    clock.advance(Duration::from_secs(9));
    let err = h.get("/x").await.unwrap_err();
    assert_eq!(
        auth_error(&err).status(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    clock.advance(SECOND);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 2);
}

#[tokio::test]
async fn a_zero_lifetime_is_warned_about_once_not_per_request() {
    let captured = Captured::default();
    let _guard = captured.install();
    let h = Harness::start().await;
    h.iqm.set_expires_in(Some(json!(0)));
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    assert_eq!(h.iqm.auth_calls(), 5);
    assert_eq!(captured.text().matches("expires_in 0").count(), 1);
}

#[tokio::test]
async fn stats_tell_a_health_check_the_tokens_life_and_the_last_failure() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.auth.stats().token_expires_in, None);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    clock.advance(Duration::from_secs(600));
    let stats = h.auth.stats();
    assert_eq!(stats.token_expires_in, Some(Duration::from_secs(3000)));
    assert_eq!(stats.last_renewal_error, None);

    h.iqm.set_refresh_answer(Answer::Status(500));
    h.iqm.set_login_answer(Answer::Status(500));
    assert!(h.auth.renew().await.is_err());
    assert_eq!(
        h.auth.stats().last_renewal_error,
        Some(FailureClass::Transient)
    );
    h.iqm.set_refresh_answer(Answer::Normal);
    h.iqm.set_login_answer(Answer::Normal);
    clock.advance(Duration::from_secs(60));
    h.auth.renew().await.unwrap();
    assert_eq!(h.auth.stats().last_renewal_error, None);

    h.iqm.invite("new@acme.example");
    h.auth
        .sign_up("new@acme.example", "Str0ng!Pass")
        .await
        .unwrap();
    h.auth.logout().await.unwrap();
    let stats = h.auth.stats();
    assert_eq!((stats.sign_ups, stats.logouts), (1, 1));
    assert_eq!(stats.token_expires_in, None);
}
