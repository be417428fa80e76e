//! The fake's knobs and records for IQM's rate limit: the window it counts over, a 429 on
//! demand, and every call it received with its status, on its clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::fake_iqm::FakeIqm;
use super::server::Shared;

/// One call the fake received: when (on its clock), where, and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Call {
    /// When the call arrived, on the fake's clock.
    pub at: Instant,
    /// The path, without the query: `/api/v3/ua/login` for a login.
    pub path: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Call {
    /// Whether it went to one of the auth endpoints (login, token, logout, sign-up).
    pub fn is_auth(&self) -> bool {
        self.path.starts_with("/api/v3/ua/")
    }
}

/// Records every call, as the router's outermost layer.
pub(super) async fn record(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let at = shared.clock.now();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    shared.calls.lock().push(Call { at, path, status });
    response
}

impl FakeIqm {
    /// Every call received (auth calls and API calls, 429s included), oldest first by arrival
    /// on the fake's clock: for bounds on calls in any window of time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iqm_auth::testing::FakeIqm;
    ///
    /// let iqm = FakeIqm::start().await?;
    /// iqm.auth_builder().build()?.access_token().await?;
    /// let calls = iqm.calls();
    /// assert_eq!((calls.len(), calls[0].path.as_str(), calls[0].status), (1, "/api/v3/ua/login", 200));
    /// # Ok(())
    /// # }
    /// ```
    pub fn calls(&self) -> Vec<Call> {
        let mut calls = self.shared.calls.lock().clone();
        calls.sort_by_key(|call| call.at);
        calls
    }

    /// The most calls received in any window of `window` (half-open, starting at a call).
    pub fn most_calls_within(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.calls().iter().map(|call| call.at).collect();
        times
            .iter()
            .enumerate()
            .map(|(i, start)| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < *start + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The window the rate limit of [`set_rate_limit`](Self::set_rate_limit) counts calls
    /// over: a minute unless set, shorter to run a test of a minute's limit in seconds.
    pub fn set_rate_limit_window(&self, window: Duration) {
        self.shared.knobs.lock().rate_limit_window = window.max(Duration::from_millis(1));
    }

    /// Answers the next call to the protected API `429 Too Many Requests`, with
    /// `Retry-After: <seconds>` if given, whatever its token: IQM's rate limit, met by a call
    /// of another client of the account.
    pub fn queue_api_rate_limit(&self, retry_after: Option<u64>) {
        self.shared
            .knobs
            .lock()
            .api_queue
            .push_back((429, retry_after));
    }
}
