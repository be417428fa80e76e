//! Lazy login, the headers every IQM request gets, and what passes through untouched.

use std::time::Duration;

use iqm_auth::testing::{Answer, FakeIqm, OW_ID};
use iqm_auth::{AuthEndpoint, AuthError};
use reqwest::StatusCode;

use crate::support::{Harness, auth_error};

#[tokio::test]
async fn building_sends_nothing_and_the_first_request_logs_in_once() {
    let h = Harness::start().await;
    assert_eq!(h.iqm.logins(), 0);

    assert_eq!(h.get("/api/v3/campaigns").await.unwrap(), 200);
    assert_eq!(h.get("/api/v3/campaigns/1").await.unwrap(), 200);

    // The fake only answers a login with Basic client credentials, X-IAA-HOST and the JSON
    // password grant, so a token means the login was well-formed.
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.refreshes(), 0);
    assert_eq!(h.auth.stats().logins, 1);
    assert_eq!(h.auth.ow_id(), Some(OW_ID));
}

#[tokio::test]
async fn every_iqm_request_carries_the_bearer_and_the_workspace_id() {
    let h = Harness::start().await;
    for path in ["/api/v3/a", "/api/v3/b?x=1", "/other/path"] {
        assert_eq!(h.get(path).await.unwrap(), 200);
    }
    let seen = h.iqm.seen_requests();
    assert_eq!(seen.len(), 3);
    for request in seen {
        assert!(request.valid_bearer, "{request:?}");
        assert_eq!(request.ow_ids, vec![OW_ID.to_string()]);
    }
}

#[tokio::test]
async fn a_caller_set_workspace_id_is_kept_not_duplicated() {
    let h = Harness::start().await;
    let response = h
        .client
        .get(h.iqm.url("/api/v3/x"))
        .header("X-IAA-OW-ID", "300002")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = h.iqm.seen_requests();
    assert_eq!(seen[0].ow_ids, vec!["300002".to_owned()]);
    assert!(seen[0].valid_bearer);
}

#[tokio::test]
async fn requests_to_other_origins_pass_through_untouched_and_start_no_login() {
    let h = Harness::start().await;
    let elsewhere = FakeIqm::start().await.unwrap();

    let response = h
        .client
        .get(elsewhere.url("/api/v3/x"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let seen = elsewhere.seen_requests();
    assert!(!seen[0].has_authorization);
    assert!(seen[0].ow_ids.is_empty());
    assert_eq!(h.iqm.logins(), 0);
    assert_eq!(elsewhere.logins(), 0);
}

#[tokio::test]
async fn same_host_on_another_port_or_scheme_is_another_origin() {
    let h = Harness::start().await;
    let other_port = FakeIqm::start().await.unwrap();
    let _ = h.client.get(other_port.url("/x")).send().await.unwrap();
    assert_eq!(h.iqm.logins(), 0);
}

#[tokio::test]
async fn calls_to_the_auth_endpoints_pass_through_without_a_login_of_the_layers_own() {
    let h = Harness::start().await;
    let response = h
        .client
        .post(h.iqm.url("/api/v3/ua/login"))
        .json(&serde_json::json!({"grantType": "password"}))
        .send()
        .await
        .unwrap();
    // The fake rejects it for lack of client credentials: the layer added none and did not log in.
    assert_eq!(response.status(), 401);
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.auth.stats().logins, 0);
}

#[tokio::test]
async fn a_request_with_the_callers_own_authorization_is_left_alone() {
    let h = Harness::start().await;
    let response = h
        .client
        .get(h.iqm.url("/api/v3/x"))
        .bearer_auth("callers-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(h.iqm.logins(), 0);
    assert_eq!(h.iqm.unauthorized(), 1);
}

#[tokio::test]
async fn a_rejected_login_names_iqms_message_and_status() {
    let h = Harness::with(|b| b.credentials(iqm_auth::testing::EMAIL, "wrong password")).await;

    let err = h.get("/api/v3/x").await.unwrap_err();

    let auth = auth_error(&err);
    assert!(matches!(auth, AuthError::Rejected { .. }));
    assert_eq!(auth.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(auth.endpoint(), Some(AuthEndpoint::Login));
    assert_eq!(
        auth.iqm_messages()[0].error,
        "User doesn't exist or user is not allowed to provided workspace."
    );
    assert!(err.to_string().contains("User doesn't exist"), "{err}");
    assert_eq!(h.iqm.api_calls(), 0);
}

#[tokio::test]
async fn a_wrong_workspace_host_is_rejected_with_iqms_message() {
    let h = Harness::with(|b| b.workspace_host("other.iqm.com")).await;
    let err = h.get("/api/v3/x").await.unwrap_err();
    assert_eq!(auth_error(&err).status(), Some(StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn garbage_answers_are_errors_and_nothing_is_cached_from_them() {
    let cases = [
        (Answer::TruncatedJson, "truncated"),
        (Answer::Html, "not JSON"),
        (Answer::MissingAccessToken, "no access_token"),
        (Answer::EmptyAccessToken, "access_token is empty"),
        (Answer::HeaderInjection, "access_token contains"),
        (Answer::MissingOwId, "no owId"),
        (Answer::ErrorEnvelope, "Simulated error in a 200"),
        (Answer::Raw("null".into()), "not an object"),
    ];
    for (answer, expected) in cases {
        // No cool-down: a refusal inside a 200 (`ErrorEnvelope`) is otherwise cooled down.
        let h = Harness::with(|b| b.rejection_cool_down(Duration::ZERO)).await;
        h.iqm.set_login_answer(answer.clone());

        let err = h.get("/api/v3/x").await.unwrap_err();
        assert!(err.to_string().contains(expected), "{answer:?}: {err}");
        assert_eq!(h.auth.ow_id(), None, "{answer:?}: something was cached");
        assert_eq!(h.iqm.api_calls(), 0);

        h.iqm.set_login_answer(Answer::Normal);
        assert_eq!(h.get("/api/v3/x").await.unwrap(), 200, "{answer:?}");
        assert_eq!(h.iqm.logins(), 2, "{answer:?}");
    }
}

#[tokio::test]
async fn access_token_shares_the_cache_with_the_middleware() {
    let h = Harness::start().await;
    let token = h.auth.access_token().await.unwrap();
    assert!(!token.is_empty());
    assert_eq!(h.get("/api/v3/x").await.unwrap(), 200);
    assert_eq!(h.auth.access_token().await.unwrap(), token);
    assert_eq!(h.iqm.logins(), 1);
}

#[tokio::test]
async fn logout_invalidates_the_token_at_iqm_and_the_next_request_logs_in_again() {
    let h = Harness::start().await;
    assert_eq!(h.get("/api/v3/x").await.unwrap(), 200);
    let old = h.auth.access_token().await.unwrap();

    h.auth.logout().await.unwrap();
    assert_eq!(h.iqm.logouts(), 1);
    assert_eq!(h.auth.ow_id(), None);

    // The old token is dead at IQM.
    let response = reqwest::Client::new()
        .get(h.iqm.url("/api/v3/x"))
        .bearer_auth(&old)
        .header("X-IAA-OW-ID", OW_ID.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(h.get("/api/v3/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 2);
    assert_eq!(h.iqm.refreshes(), 0);
}

#[tokio::test]
async fn logout_without_a_token_sends_nothing() {
    let h = Harness::start().await;
    h.auth.logout().await.unwrap();
    assert_eq!(h.iqm.logouts(), 0);
}

#[tokio::test]
async fn sign_up_returns_the_new_accounts_tokens_and_leaves_the_cache_alone() {
    let h = Harness::start().await;
    h.iqm.invite("new@acme.example");

    let set = h
        .auth
        .sign_up("new@acme.example", "Str0ng!Pass")
        .await
        .unwrap();

    assert!(!set.access_token.expose().is_empty());
    assert!(set.refresh_token.is_some());
    assert_eq!(set.ow_id, None);
    assert_eq!(h.iqm.sign_ups(), 1);
    assert_eq!(h.iqm.logins(), 0);
    assert_eq!(h.auth.ow_id(), None);
}

#[tokio::test]
async fn a_refused_sign_up_carries_iqms_message() {
    let h = Harness::start().await;
    let err = h
        .auth
        .sign_up("stranger@acme.example", "Str0ng!Pass")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(
        err.iqm_messages()[0].error,
        "User is not invited to this workspace."
    );

    h.iqm.invite("weak@acme.example");
    let err = h
        .auth
        .sign_up("weak@acme.example", "weak")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("at least 8 characters"), "{err}");
}

#[test]
fn outside_a_tokio_runtime_a_token_request_is_a_clear_error_not_a_panic() {
    let auth = iqm_auth::IqmAuth::builder()
        .base_url("http://127.0.0.1:9")
        .client_credentials("id", "secret")
        .workspace_host("acme.iqm.com")
        .credentials("e@x.y", "pw")
        .build()
        .unwrap();
    let err = futures::executor::block_on(auth.access_token()).unwrap_err();
    assert!(matches!(err, AuthError::NoRuntime), "{err:?}");
}
