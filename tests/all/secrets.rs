//! Nothing secret in Debug, Display, errors or tracing output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use iqm_auth::testing::{Answer, CLIENT_SECRET, PASSWORD};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::Harness;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_appears_in_debug_errors_or_trace_output() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    let mut shown = Vec::new();
    let mut tokens = Vec::new();

    // Login, 401 and renewal, a failed refresh, a rejected login, logout.
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
    h.auth.logout().await.unwrap();
    shown.push(format!("{:?}", h.auth));

    let trace = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        trace.contains("logged in"),
        "the trace captured nothing: {trace}"
    );
    shown.push(trace);
    let all = shown.join("\n");
    for secret in [PASSWORD, CLIENT_SECRET] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    for token in &tokens {
        assert!(!all.contains(token.as_str()), "a token leaked:\n{all}");
    }
    // Refresh tokens come from the fake as refresh-NNNN-…; access tokens as access-NNNN-….
    assert!(!all.contains("refresh-0"), "a refresh token leaked:\n{all}");
    assert!(!all.contains("access-0"), "an access token leaked:\n{all}");
}
