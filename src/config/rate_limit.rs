//! The builder's settings for IQM's rate limit (see the README's "IQM's rate limit").

use std::time::Duration;

use super::IqmAuthBuilder;
use crate::limit::Rate;

const MINUTE: Duration = Duration::from_secs(60);

impl IqmAuthBuilder {
    /// Paces every request to IQM through this layer, API requests and the layer's own auth
    /// calls together, to `per_minute` a minute (at least 1): one every `60 s / per_minute`, in
    /// the order they were made, the layer's auth calls before waiting API requests. A request
    /// waits for its turn up to [`rate_limit_wait`](Self::rate_limit_wait); one whose turn
    /// would come later fails at once, unsent, with
    /// [`AuthError::RateLimited`](crate::AuthError::RateLimited). With a
    /// [`shared_session`](Self::shared_session) the pace is the fleet's: every replica's
    /// requests together keep to it. Defaults to no pacing.
    ///
    /// The rate is kept as requests leave the layer; IQM counts them as they arrive, which the
    /// network may shift by a few milliseconds. A rate a little under IQM's (19 for its 20 a
    /// minute) keeps every request inside IQM's minute however its neighbours are delayed.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let auth = iqm_auth::IqmAuth::builder()
    ///     .client_credentials("client-id", "client-secret")
    ///     .workspace_host("acme.iqm.com")
    ///     .credentials("ops@acme.com", "password")
    ///     .request_rate(19)                         // one request every 3.16 s
    ///     .rate_limit_wait(Duration::from_secs(60)) // queued up to 19 deep
    ///     .build()?;
    /// # let _ = auth;
    /// # Ok::<(), iqm_auth::ConfigError>(())
    /// ```
    pub fn request_rate(self, per_minute: u32) -> Self {
        self.request_rate_per(per_minute, MINUTE)
    }

    /// Like [`request_rate`](Self::request_rate), `calls` (at least 1) per `period` (at least
    /// 1 ms): for a limit over another period than IQM's minute.
    pub fn request_rate_per(mut self, calls: u32, period: Duration) -> Self {
        self.request_rate = Some(Rate {
            calls: calls.max(1),
            period: period.max(Duration::from_millis(1)),
        });
        self
    }

    /// How long a request may wait before it is sent, for IQM's window to open after a 429 or
    /// for its turn in the [`request_rate`](Self::request_rate). A request that would wait
    /// longer fails at once, unsent, with
    /// [`AuthError::RateLimited`](crate::AuthError::RateLimited) and the time until it could
    /// go. Zero fails at once whenever a request would wait. Defaults to 30 s: long enough to
    /// wait out most of IQM's windows (so a retry layer above this one goes through), short
    /// enough that a caller hears within half a minute.
    pub fn rate_limit_wait(mut self, wait: Duration) -> Self {
        self.rate_limit_wait = wait;
        self
    }
}
