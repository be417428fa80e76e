//! The fault matrix: what the layer does when IQM, the network or the answers misbehave, with
//! the exact number of auth calls each case costs.

use std::time::Duration;

use futures::future::join_all;
use iqm_auth::AuthError;
use iqm_auth::testing::{Answer, FakeIqm, OW_ID};
use reqwest::StatusCode;

use crate::support::{Harness, auth_error, client_with, eventually};

use crate::support::ATTEMPTS;
const HOUR: Duration = Duration::from_secs(3600);
/// Into the renewal window of a one-hour token (60 s margin), still valid.
const INTO_MARGIN: Duration = Duration::from_secs(59 * 60 + 30);

#[tokio::test]
async fn login_5xx_then_recovery_is_retried_within_one_request() {
    let h = Harness::start().await;
    h.iqm
        .queue_login_answers([Answer::Status(503), Answer::Status(500)]);

    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.logins(), 3);
    assert_eq!(h.auth.stats().failed_renewals, 0);
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_within_the_renewal() {
    let h = Harness::start().await;
    h.iqm
        .queue_login_answers([Answer::StatusRetryAfter(429, 1)]);

    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.logins(), 2);
}

#[tokio::test]
async fn no_auth_call_is_made_before_a_long_retry_after_passes() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_login_answer(Answer::StatusRetryAfter(429, 60));

    let err = h.get("/x").await.unwrap_err();
    assert_eq!(
        auth_error(&err).retry_after(),
        Some(Duration::from_secs(60))
    );
    assert_eq!(h.iqm.logins(), 1);

    h.iqm.set_login_answer(Answer::Normal);
    for _ in 0..5 {
        let again = h.get("/x").await.unwrap_err();
        assert_eq!(
            auth_error(&again).status(),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
    }
    clock.advance(Duration::from_secs(59));
    assert!(h.get("/x").await.is_err());
    assert_eq!(h.iqm.logins(), 1);

    clock.advance(Duration::from_secs(1));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 2);
}

#[tokio::test]
async fn a_login_that_hangs_past_its_timeout_is_tried_three_times_then_fails() {
    let h = Harness::with(|b| b.auth_timeout(Duration::from_millis(100))).await;
    h.iqm.set_login_delay(Duration::from_secs(30));

    let err = h.get("/x").await.unwrap_err();

    let auth = auth_error(&err);
    assert!(
        matches!(auth, AuthError::TimedOut { after, .. } if *after == Duration::from_millis(100)),
        "{auth:?}"
    );
    assert!(auth.to_string().contains("timed out"), "{auth}");
    assert_eq!(h.iqm.logins(), ATTEMPTS);
}

#[tokio::test]
async fn one_acquisition_gives_up_within_its_budget() {
    let h = Harness::with(|b| b.acquire_timeout(Duration::from_millis(300))).await;
    h.iqm.set_login_delay(Duration::from_secs(30));

    let err = h.get("/x").await.unwrap_err();

    assert!(matches!(
        auth_error(&err),
        AuthError::BudgetExhausted(budget) if *budget == Duration::from_millis(300)
    ));
    assert_eq!(h.iqm.logins(), 1);
}

#[tokio::test]
async fn a_connection_cut_mid_body_is_retried() {
    let h = Harness::start().await;
    h.iqm.queue_login_answers([Answer::ResetMidBody]);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 2);

    let h = Harness::start().await;
    h.iqm.set_login_answer(Answer::ResetMidBody);
    let err = h.get("/x").await.unwrap_err();
    assert!(
        matches!(auth_error(&err), AuthError::Transport { .. }),
        "{err:?}"
    );
    assert_eq!(h.iqm.logins(), ATTEMPTS);
}

#[tokio::test]
async fn unusable_answers_are_not_retried() {
    for answer in [Answer::TruncatedJson, Answer::Html, Answer::HeaderInjection] {
        let h = Harness::start().await;
        h.iqm.set_login_answer(answer.clone());
        let err = h.get("/x").await.unwrap_err();
        assert!(
            matches!(auth_error(&err), AuthError::InvalidResponse { .. }),
            "{answer:?}"
        );
        assert_eq!(h.iqm.logins(), 1, "{answer:?}");
        assert_eq!(h.auth.stats().failures_invalid_response, 1);
    }
}

#[tokio::test]
async fn a_failing_early_refresh_keeps_the_valid_token_in_use_and_is_retried_later() {
    let (h, clock) = Harness::with_manual_clock(true).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let token = h.auth.access_token().await.unwrap();
    h.iqm.set_refresh_answer(Answer::Status(500));
    h.iqm.set_login_answer(Answer::Status(500));

    // One refresh try, then the login's tries until the budget's burst of 3 is spent.
    clock.advance(INTO_MARGIN);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    eventually("the early renewal failed", || {
        h.auth.stats().failed_renewals == 1
    })
    .await;
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 1 + 2));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.auth.access_token().await.unwrap(), token);

    // IQM recovers; the background renewer tries again on its own, once the budget for failed
    // auth calls (3 in a row, then one every 6 s) allows a call again. The refresh grant rests
    // for 30 s after its failure, so the renewal logs in.
    h.iqm.set_refresh_answer(Answer::Normal);
    h.iqm.set_login_answer(Answer::Normal);
    clock.advance(Duration::from_secs(6));
    eventually("the retried renewal", || {
        h.auth.stats().renewals_proactive == 2
    })
    .await;
    eventually("the new token", || {
        h.auth.stats().last_renewal_error.is_none() && h.iqm.logins() == 1 + 2 + 1
    })
    .await;
    assert_ne!(h.auth.access_token().await.unwrap(), token);
    assert_eq!(h.iqm.refreshes(), 1);
    assert_eq!(h.iqm.unauthorized(), 0);
}

#[tokio::test]
async fn a_valid_token_stays_in_use_when_iqm_rejects_both_refresh_and_login() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_refresh_tokens();
    h.iqm.set_login_answer(Answer::Status(403));

    clock.advance(INTO_MARGIN);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    eventually("the early renewal failed", || {
        h.auth.stats().failed_renewals == 1
    })
    .await;
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 2));
    assert_eq!(h.auth.ow_id(), Some(OW_ID));
}

#[tokio::test]
async fn rejected_refresh_and_login_cool_down_then_recover_once_fixed() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_refresh_tokens();
    h.iqm.set_login_answer(Answer::Status(403));
    clock.advance(HOUR);

    let err = h.get("/x").await.unwrap_err();
    assert_eq!(auth_error(&err).status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("Simulated failure"), "{err}");
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 2));

    // During the 30 s cool-down: the same error at once, no auth call.
    for _ in 0..10 {
        let again = h.get("/x").await.unwrap_err();
        assert_eq!(again.to_string(), err.to_string());
    }
    h.iqm.set_login_answer(Answer::Normal);
    clock.advance(Duration::from_secs(29));
    assert!(h.get("/x").await.is_err());
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 2));

    clock.advance(Duration::from_secs(1));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 3));
}

#[tokio::test]
async fn a_redirect_away_from_iqm_would_carry_the_workspace_id_with_reqwests_default_policy() {
    let h = Harness::start().await;
    let elsewhere = FakeIqm::start().await.unwrap();
    h.iqm.redirect("/r", &elsewhere.url("/landing"));

    let status = h.get("/r").await.unwrap();

    // reqwest dropped Authorization on the way out, but not X-IAA-OW-ID.
    assert_eq!(status, 401);
    let seen = elsewhere.seen_requests();
    assert!(!seen[0].has_authorization);
    assert_eq!(seen[0].ow_ids, [OW_ID.to_string()]);
}

#[tokio::test]
async fn the_redirect_policy_keeps_iqm_credentials_on_iqms_origin() {
    let iqm = FakeIqm::start().await.unwrap();
    let elsewhere = FakeIqm::start().await.unwrap();
    let auth = iqm.auth_builder().build().unwrap();
    let http = reqwest::Client::builder()
        .redirect(auth.redirect_policy())
        .build()
        .unwrap();
    let client = iqm_auth::reqwest_middleware::ClientBuilder::new(http)
        .with(auth)
        .build();
    iqm.redirect("/away", &elsewhere.url("/landing"));
    iqm.redirect("/here", &iqm.url("/landing"));

    let away = client.get(iqm.url("/away")).send().await.unwrap();
    let here = client.get(iqm.url("/here")).send().await.unwrap();

    assert_eq!(away.status(), 307);
    assert_eq!(elsewhere.api_calls(), 0);
    assert_eq!(here.status(), 200);
    let landing = iqm.seen_requests().pop().unwrap();
    assert_eq!(landing.path, "/landing");
    assert_eq!(landing.ow_ids, [OW_ID.to_string()]);
}

#[tokio::test]
async fn cancelling_the_task_that_drives_a_refresh_neither_aborts_nor_half_applies_it() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_delay(Duration::from_millis(300));
    clock.advance(HOUR);

    let driver = tokio::spawn({
        let client = h.client.clone();
        let url = h.iqm.url("/x");
        async move { client.get(url).send().await }
    });
    eventually("the refresh reached IQM", || h.iqm.refreshes() == 1).await;
    driver.abort();
    assert!(driver.await.unwrap_err().is_cancelled());

    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.refreshes(), 1);
    // The rotated refresh token was stored with its access token: the next refresh works.
    clock.advance(HOUR);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_during_an_outage_all_get_an_answer_from_one_renewal() {
    let h = Harness::start().await;
    h.iqm.set_login_answer(Answer::Status(503));
    h.iqm.set_login_delay(Duration::from_millis(50));

    let results = join_all((0..1000).map(|_| h.client.get(h.iqm.url("/x")).send())).await;

    assert_eq!(results.len(), 1000);
    for result in &results {
        let err = result.as_ref().unwrap_err();
        assert_eq!(
            auth_error(err).status(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
    assert_eq!(h.iqm.logins(), ATTEMPTS);
    assert_eq!(h.auth.stats().renewals_first_use, 1);
}

#[tokio::test]
async fn auth_calls_during_a_minute_long_outage_stay_within_the_documented_bound() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_login_answer(Answer::Status(503));

    // A request every 250 ms for 60 s.
    let mut logins_at_30_s = 0;
    for quarter in 0..240 {
        assert!(h.get("/x").await.is_err());
        if quarter == 119 {
            logins_at_30_s = h.iqm.logins();
        }
        clock.advance(Duration::from_millis(250));
    }

    // The budget for failed auth calls (10 a minute, 3 in a row) lets the first renewal try
    // 3 times, then one call every 6 s; the pacing pauses 2, 4, 8 and 16 s on top. Renewals at
    // 0, 6, 12, 18 and 26 s make 3 + 4 calls in the first 30 s; the one at 42 s, after a 16 s
    // pause that refilled the budget, tries 3 times: 10 calls in the minute, the budget's limit.
    assert_eq!(logins_at_30_s, 7);
    assert_eq!(h.auth.stats().renewals_first_use, 6);
    assert_eq!(h.iqm.logins(), 10);
    assert_eq!(h.iqm.api_calls(), 0);
}

#[tokio::test]
async fn an_unreachable_iqm_is_retried_then_reported() {
    let iqm = FakeIqm::start().await.unwrap();
    let base = iqm.base_url();
    let auth = iqm.auth_builder().build().unwrap();
    drop(iqm);
    let client = client_with(&auth);

    let err = client.get(format!("{base}/x")).send().await.unwrap_err();

    assert!(matches!(auth_error(&err), AuthError::Transport { .. }));
    assert_eq!(auth.stats().logins, ATTEMPTS);
    assert_eq!(auth.stats().failures_transient, 1);
}
