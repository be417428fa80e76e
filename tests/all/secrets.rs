//! Nothing secret in Debug, Display, errors or tracing output.

use iqm_auth::testing::{Answer, CLIENT_SECRET, PASSWORD};

use crate::support::{Captured, Harness};

const SIGN_UP_PASSWORD: &str = "Sign-Up-Secret-42!";

#[tokio::test]
async fn no_secret_appears_in_debug_errors_or_trace_output() {
    let captured = Captured::default();
    let _guard = captured.install();

    let h = Harness::start().await;
    let mut shown = Vec::new();
    let mut tokens = Vec::new();

    // Login, 401 and renewal, a failed refresh, a rejected login, sign-ups, logout.
    assert_eq!(h.get("/x").await.unwrap(), 200);
    tokens.push(h.auth.access_token().await.unwrap());
    h.iqm.revoke_all_access_tokens();
    assert_eq!(h.get("/x").await.unwrap(), 200);
    tokens.push(h.auth.access_token().await.unwrap());
    h.iqm.set_refresh_answer(Answer::Status(500));
    h.iqm.set_login_answer(Answer::HeaderInjection);
    h.auth.renew().await.unwrap_err();
    h.iqm.set_login_answer(Answer::Status(403));
    if let Err(err) = h.auth.renew().await {
        shown.push(format!("{err} {err:?}"));
    }
    shown.push(format!("{:?}", h.auth));
    shown.push(format!("{:?}", h.iqm.auth_builder()));
    h.iqm.invite("new@acme.example");
    let signed_up = h
        .auth
        .sign_up("new@acme.example", SIGN_UP_PASSWORD)
        .await
        .unwrap();
    tokens.push(signed_up.access_token.expose().to_owned());
    shown.push(format!("{signed_up:?}"));
    let refused = h
        .auth
        .sign_up("stranger@acme.example", SIGN_UP_PASSWORD)
        .await
        .unwrap_err();
    shown.push(format!("{refused} {refused:?}"));
    h.auth.logout().await.unwrap();
    shown.push(format!("{:?}", h.auth));

    let trace = captured.text();
    assert!(
        trace.contains("logged in"),
        "the trace captured nothing: {trace}"
    );
    shown.push(trace);
    let all = shown.join("\n");
    assert!(
        all.contains("iqm_auth.sign_up") && all.contains("iqm_auth.logout"),
        "sign-up and logout have spans:\n{all}"
    );
    for secret in [PASSWORD, CLIENT_SECRET, SIGN_UP_PASSWORD] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    for token in &tokens {
        assert!(!all.contains(token.as_str()), "a token leaked:\n{all}");
    }
    // Refresh tokens come from the fake as refresh-NNNN-…; access tokens as access-NNNN-….
    assert!(!all.contains("refresh-0"), "a refresh token leaked:\n{all}");
    assert!(!all.contains("access-0"), "an access token leaked:\n{all}");
}

#[tokio::test]
async fn a_password_in_the_base_url_is_refused_and_never_echoed() {
    let h = Harness::start().await;
    let with_password = h.iqm.base_url().replace("http://", "http://ops:hunter2@");
    let builder = h.iqm.auth_builder().base_url(&with_password);
    let debug = format!("{builder:?}");
    let err = builder.build().unwrap_err();

    assert!(
        matches!(err, iqm_auth::ConfigError::InvalidBaseUrl { .. }),
        "{err:?}"
    );
    for shown in [debug, err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
