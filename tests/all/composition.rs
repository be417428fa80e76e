//! The layer inside a stack with reqwest-retry and reqwest-tracing, in the order the README
//! gives: retry, then tracing, then iqm-auth (the innermost, next to the network).

use std::sync::Arc;
use std::time::Duration;

use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use iqm_auth::testing::{FakeIqm, ManualClock};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryTransientMiddleware};
use reqwest_tracing::TracingMiddleware;

use crate::support::eventually;

fn retry() -> RetryTransientMiddleware<ExponentialBackoff> {
    // A fixed one-second wait (no jitter, which could shrink it to nothing), so the test can
    // act between two attempts.
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_secs(1), Duration::from_secs(1))
        .jitter(Jitter::None)
        .build_with_max_retries(2);
    RetryTransientMiddleware::new_with_policy(policy)
}

/// The README's order.
fn recommended(auth: &IqmAuth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(retry())
        .with(TracingMiddleware::default())
        .with(auth.clone())
        .build()
}

/// A fake IQM and a layer on one clock the test moves by hand.
async fn with_manual_clock() -> (FakeIqm, IqmAuth, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    let auth = iqm
        .auth_builder()
        .background_renewal(false)
        .build()
        .unwrap();
    (iqm, auth, clock)
}

/// Sends one request; after IQM answers its first attempt with 503, the token expires. Returns
/// the final status.
async fn retried_across_a_renewal(
    iqm: &FakeIqm,
    client: &ClientWithMiddleware,
    clock: &ManualClock,
) -> u16 {
    iqm.queue_api_answers([503]);
    let request = tokio::spawn({
        let client = client.clone();
        let url = iqm.url("/api/v3/x");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    });
    eventually("the first attempt was answered", || iqm.api_calls() == 2).await;
    clock.advance(Duration::from_secs(3600));
    request.await.unwrap()
}

#[tokio::test]
async fn every_retry_attempt_carries_the_token_current_when_it_is_sent() {
    let (iqm, auth, clock) = with_manual_clock().await;
    let client = recommended(&auth);
    assert_eq!(
        client.get(iqm.url("/warm")).send().await.unwrap().status(),
        200
    );

    assert_eq!(retried_across_a_renewal(&iqm, &client, &clock).await, 200);

    // The retry went back through iqm-auth, which renewed the expired token before sending.
    assert_eq!(iqm.api_calls(), 3);
    assert_eq!(iqm.unauthorized(), 0);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
}

#[tokio::test]
async fn with_iqm_auth_outside_the_retry_layer_a_retry_reuses_a_stale_token() {
    let (iqm, auth, clock) = with_manual_clock().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .with(retry())
        .build();
    assert_eq!(
        client.get(iqm.url("/warm")).send().await.unwrap().status(),
        200
    );

    assert_eq!(retried_across_a_renewal(&iqm, &client, &clock).await, 200);

    // The retry resent the old headers: IQM refused them, and a 401 round trip was needed.
    assert_eq!(iqm.unauthorized(), 1);
    assert_eq!(iqm.api_calls(), 4);
}

#[tokio::test]
async fn a_401_is_handled_once_not_once_per_layer() {
    let iqm = FakeIqm::start().await.unwrap();
    let auth = iqm.auth_builder().build().unwrap();
    let client = recommended(&auth);
    assert_eq!(
        client.get(iqm.url("/warm")).send().await.unwrap().status(),
        200
    );
    iqm.revoke_all_access_tokens();

    assert_eq!(
        client.get(iqm.url("/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        (iqm.unauthorized(), iqm.refreshes(), iqm.api_calls()),
        (1, 1, 3)
    );

    // Tokens dead on arrival: the replay's 401 goes back, and the retry layer does not retry it.
    iqm.revoke_all_access_tokens();
    iqm.set_token_lifetime(Duration::ZERO);
    assert_eq!(
        client.get(iqm.url("/x")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        (iqm.unauthorized(), iqm.refreshes(), iqm.api_calls()),
        (3, 2, 5)
    );
    assert_eq!(auth.stats().unauthorized_replays, 2);
}

#[tokio::test]
async fn transient_iqm_errors_are_retried_by_the_retry_layer_with_a_valid_token_each_time() {
    let iqm = FakeIqm::start().await.unwrap();
    let auth = iqm.auth_builder().build().unwrap();
    let client = recommended(&auth);
    iqm.queue_api_answers([503, 502]);

    assert_eq!(
        client.get(iqm.url("/x")).send().await.unwrap().status(),
        200
    );

    let seen = iqm.seen_requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.valid_bearer));
    assert_eq!(iqm.logins(), 1);
}
