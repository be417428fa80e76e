//! Single flight: many callers, one login; one renewal per stale token; cancellation.

use std::time::Duration;

use futures::future::join_all;
use iqm_auth::AuthError;
use iqm_auth::testing::Answer;

use crate::support::{Harness, auth_error, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_on_a_cold_cache_cause_one_login() {
    let h = Harness::start().await;
    h.iqm.set_login_delay(Duration::from_millis(100));

    let statuses = join_all((0..100).map(|i| h.get_owned(format!("/api/v3/item/{i}")))).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.refreshes(), 0);
    assert_eq!(h.iqm.api_calls(), 100);
    assert_eq!(h.auth.stats().renewals_first_use, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_waiting_on_a_failed_login_gets_its_error() {
    let h = Harness::start().await;
    h.iqm.set_login_delay(Duration::from_millis(100));
    h.iqm.set_login_answer(Answer::Status(503));

    let results = join_all((0..20).map(|_| h.client.get(h.iqm.url("/api/v3/x")).send())).await;

    for result in &results {
        let err = result.as_ref().unwrap_err();
        assert_eq!(
            auth_error(err).status(),
            Some(reqwest::StatusCode::SERVICE_UNAVAILABLE)
        );
    }
    // All 20 joined the one renewal in flight, which tried the login the default 3 times.
    assert_eq!(h.auth.stats().renewals_first_use, 1);
    assert_eq!(h.iqm.logins(), crate::support::ATTEMPTS);
    assert_eq!(h.iqm.api_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_401s_on_one_stale_token_cause_one_renewal() {
    let h = Harness::start().await;
    assert_eq!(h.get("/api/v3/warm").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();
    h.iqm.set_refresh_delay(Duration::from_millis(100));

    let statuses = join_all((0..100).map(|i| h.get_owned(format!("/api/v3/item/{i}")))).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.refreshes(), 1);
    assert_eq!(h.auth.stats().renewals_unauthorized, 1);
    // Requests sent before the first 401 came back got one and were replayed; the others
    // waited for the renewal instead of sending the refused token.
    let refused = h.iqm.unauthorized();
    assert!((1..=100).contains(&refused), "{refused}");
    assert_eq!(h.auth.stats().unauthorized_replays, refused);
    assert_eq!(h.iqm.api_calls(), 1 + 100 + refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_request_that_started_a_login_neither_hangs_nor_aborts_it() {
    let h = Harness::start().await;
    h.iqm.set_login_delay(Duration::from_millis(300));

    let first = tokio::spawn({
        let client = h.client.clone();
        let url = h.iqm.url("/api/v3/x");
        async move { client.get(url).send().await }
    });
    eventually("the login reached IQM", || h.iqm.logins() == 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    // The login went on for the others: they use its token, no second login.
    assert_eq!(h.get("/api/v3/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.api_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_login_is_never_cached_and_later_requests_log_in_afresh() {
    let h = Harness::start().await;
    h.iqm.set_login_delay(Duration::from_millis(200));
    {
        // A runtime that dies mid-login takes the login task with it.
        let client = h.client.clone();
        let url = h.iqm.url("/api/v3/x");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), client.get(url).send()).await;
            });
        })
        .join()
        .unwrap();
    }
    assert_eq!(h.auth.ow_id(), None);
    h.iqm.set_login_delay(Duration::ZERO);

    assert_eq!(h.get("/api/v3/x").await.unwrap(), 200);
    assert_eq!(h.iqm.api_calls(), 1);
    assert_eq!(h.auth.stats().failed_renewals, 0);
}

#[tokio::test]
async fn a_login_outage_fails_every_caller_with_a_clear_error() {
    let h = Harness::start().await;
    h.iqm.set_login_answer(Answer::Status(500));
    let err = h.get("/api/v3/x").await.unwrap_err();
    assert!(matches!(auth_error(&err), AuthError::Rejected { .. }));
    assert!(err.to_string().contains("Simulated failure"), "{err}");
}
