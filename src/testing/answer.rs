//! How the fake answers a login or refresh call: correctly, or with one of the faults IQM
//! and the proxies in front of it show.

/// How the fake answers a login or refresh call that it would otherwise accept.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub enum Answer {
    /// A correct token answer.
    #[default]
    Normal,
    /// A failure with this status and an IQM error envelope.
    Status(u16),
    /// A failure with this status, an IQM error envelope and `Retry-After: <seconds>`.
    StatusRetryAfter(u16, u64),
    /// Status 200 with JSON cut off half-way.
    TruncatedJson,
    /// Status 200 with an HTML page.
    Html,
    /// Status 200 with an IQM error envelope (`"success": false`).
    ErrorEnvelope,
    /// Status 200, a token answer without `access_token`.
    MissingAccessToken,
    /// Status 200, a token answer whose access token is empty.
    EmptyAccessToken,
    /// Status 200, a token answer whose access token contains CR LF and a header.
    HeaderInjection,
    /// Status 200, a login answer without `owId`.
    MissingOwId,
    /// Status 200 and this body, as is.
    Raw(String),
    /// An HTML page of `size` bytes with this status, and `Retry-After: <seconds>` if given: a
    /// proxy's error page, say.
    Page {
        /// The HTTP status.
        status: u16,
        /// The size of the body in bytes.
        size: usize,
        /// The `Retry-After` seconds, if any.
        retry_after: Option<u64>,
    },
    /// Status 200, half a token answer, then the connection is cut.
    ResetMidBody,
}

impl Answer {
    /// Whether the fake acts on the call before it answers this way: a refresh answered so
    /// rotates the refresh token, as IQM would before its answer is lost on the way (a cut
    /// connection, a truncated body).
    pub(super) fn acts(&self) -> bool {
        matches!(
            self,
            Self::Normal | Self::TruncatedJson | Self::ResetMidBody
        )
    }
}
