//! 401 from IQM: renew once, replay once, never loop.

use std::time::Duration;

use bytes::Bytes;
use iqm_auth::testing::Answer;

use crate::support::Harness;

#[tokio::test]
async fn a_401_renews_the_token_once_and_replays_the_request_once() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();

    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.unauthorized(), 1);
    assert_eq!(h.iqm.refreshes(), 1);
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.api_calls(), 3);
    assert_eq!(h.auth.stats().unauthorized_replays, 1);
}

#[tokio::test]
async fn a_replayed_request_keeps_its_method_body_and_the_callers_workspace() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();

    let response = h
        .client
        .post(h.iqm.url("/api/v3/things"))
        .header("X-IAA-OW-ID", "300002")
        .json(&serde_json::json!({"name": "thing"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let seen = h.iqm.seen_requests();
    let replayed = seen.last().unwrap();
    assert_eq!(replayed.method, "POST");
    assert_eq!(replayed.ow_ids, ["300002"]);
    assert!(replayed.valid_bearer);
}

#[tokio::test]
async fn a_401_on_the_replay_is_handed_back_never_a_loop() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();
    // Every new token is dead on arrival.
    h.iqm.set_token_lifetime(Duration::ZERO);

    assert_eq!(h.get("/x").await.unwrap(), 401);

    assert_eq!(h.iqm.unauthorized(), 2);
    assert_eq!(h.iqm.auth_calls(), 2);
}

#[tokio::test]
async fn a_request_that_cannot_be_replayed_is_sent_once_and_the_next_one_uses_a_renewed_token() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();

    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{}"))]);
    let response = h
        .client
        .post(h.iqm.url("/api/v3/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();

    // Handed back at once; the renewal runs on, and the next request waits for it.
    assert_eq!(response.status(), 401);
    assert_eq!(h.iqm.unauthorized(), 1);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.unauthorized(), 1);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 1));
}

#[tokio::test]
async fn with_replay_switched_off_a_401_is_handed_back_and_the_token_renewed() {
    let h = Harness::with(|b| b.replay_unauthorized(false)).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();

    assert_eq!(h.get("/x").await.unwrap(), 401);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.unauthorized(), 1);
    assert_eq!(h.iqm.refreshes(), 1);
    assert_eq!(h.auth.stats().unauthorized_replays, 0);
}

#[tokio::test]
async fn a_401_whose_renewal_fails_returns_the_renewal_error() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_access_tokens();
    h.iqm.revoke_all_refresh_tokens();
    h.iqm.set_login_answer(Answer::Status(403));

    let err = h.get("/x").await.unwrap_err();

    assert_eq!(
        crate::support::auth_error(&err).status(),
        Some(reqwest::StatusCode::FORBIDDEN)
    );
    assert_eq!(h.iqm.unauthorized(), 1);
    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 2));
}
