//! `iqm-auth get` and `post`: one request through the layer, 401 replay included.

use crate::support::Setup;

#[test]
fn get_with_a_revoked_token_renews_once_and_prints_the_answer() {
    let setup = Setup::new();
    let store = setup.store();
    assert_eq!(setup.run(&["token", "--store", &store]).code, 0);
    setup.iqm.revoke_all_access_tokens();

    let run = setup.run(&["get", "/api/v3/campaigns", "--store", &store]);

    assert_eq!(run.code, 0, "{run:?}");
    // One renewal (the stored refresh token), one 401, one replay answered 200.
    assert_eq!(setup.auth_calls(), (1, 1));
    assert_eq!(setup.iqm.unauthorized(), 1);
    assert_eq!(setup.iqm.api_calls(), 2);
    // Pretty, in IQM's own key order.
    assert!(
        run.stdout
            .starts_with("{\n  \"success\": true,\n  \"data\": {\n"),
        "{}",
        run.stdout
    );
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["data"]["path"], "/api/v3/campaigns");
    assert_eq!(answer["data"]["method"], "GET");
}

#[test]
fn an_http_error_exits_7_with_iqms_answer_printed() {
    let setup = Setup::new();
    setup.iqm.queue_api_answers([422]);

    let run = setup.run(&["get", "api/v3/campaigns?page=2"]);

    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stdout.contains("Simulated API failure"), "{run:?}");
    assert_eq!(
        run.stderr,
        "iqm-auth: IQM answered 422 Unprocessable Entity to GET /api/v3/campaigns\n"
    );
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn post_sends_its_json_and_what_is_not_json_is_not_sent() {
    let setup = Setup::new();

    let sent = setup.run(&[
        "post",
        "/api/v3/campaigns",
        "--data",
        r#"{"name": "spring"}"#,
    ]);
    assert_eq!(sent.code, 0, "{sent:?}");
    let answer: serde_json::Value = serde_json::from_str(&sent.stdout).unwrap();
    assert_eq!(answer["data"]["method"], "POST");

    let refused = setup.run(&["post", "/api/v3/campaigns", "--data", "name=spring"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--data is not JSON"), "{refused:?}");
    assert!(!refused.stderr.contains("spring"), "{refused:?}");

    let elsewhere = setup.run(&["get", "https://example.com/api"]);
    assert_eq!(elsewhere.code, 2, "{elsewhere:?}");

    assert_eq!(setup.iqm.api_calls(), 1);
    assert_eq!(setup.auth_calls(), (1, 0));
}
