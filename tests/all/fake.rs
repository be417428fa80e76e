//! The fake IQM's own knobs that users test their code with: its clock and its rate limit.

use std::sync::Arc;
use std::time::Duration;

use iqm_auth::testing::{FakeIqm, ManualClock};

use crate::support::auth_error;

async fn status_and_retry_after(url: &str) -> (u16, Option<String>) {
    let response = reqwest::Client::new().get(url).send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after)
}

#[tokio::test]
async fn past_its_rate_limit_the_fake_answers_429_with_the_seconds_until_a_call_is_admitted() {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    iqm.set_rate_limit(Some(3));
    let url = iqm.url("/api/v3/x");

    for _ in 0..3 {
        assert_eq!(status_and_retry_after(&url).await, (401, None));
        clock.advance(Duration::from_secs(10));
    }
    assert_eq!(
        status_and_retry_after(&url).await,
        (429, Some("30".to_owned()))
    );
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        status_and_retry_after(&url).await,
        (429, Some("1".to_owned()))
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(status_and_retry_after(&url).await, (401, None));

    assert_eq!((iqm.api_calls(), iqm.rate_limited()), (6, 2));
}

#[tokio::test]
async fn the_layer_sees_the_fakes_rate_limit_as_a_429_with_its_retry_after() {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    let auth = iqm.auth_builder().build().unwrap();
    let client = crate::support::client_with(&auth);
    iqm.set_rate_limit(Some(1));
    assert_eq!(
        reqwest::Client::new()
            .get(iqm.url("/x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let err = client.get(iqm.url("/x")).send().await.unwrap_err();

    let err = auth_error(&err);
    assert_eq!(err.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!((iqm.logins(), iqm.rate_limited()), (1, 1));
}

#[tokio::test]
async fn tokens_expire_at_the_fake_when_its_clock_says_so() {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    iqm.set_token_lifetime(Duration::from_secs(600));
    let auth = iqm.auth_builder().build().unwrap();
    let token = auth.access_token().await.unwrap();
    let get = || {
        reqwest::Client::new()
            .get(iqm.url("/x"))
            .bearer_auth(&token)
            .header("x-iaa-ow-id", "1")
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);

    clock.advance(Duration::from_secs(599));
    assert_eq!(get().await.unwrap().status(), 200);
    clock.advance(Duration::from_secs(1));
    assert_eq!(get().await.unwrap().status(), 401);
}
