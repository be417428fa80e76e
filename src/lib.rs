//! A [`reqwest-middleware`](reqwest_middleware) layer that authenticates every request a service
//! sends to the [IQM](https://iqm.com) API.
//!
//! Build an [`IqmAuth`] with [`IqmAuth::builder`] (or [`IqmAuth::from_env`]) and add it to a
//! `reqwest_middleware` client. It logs in lazily on the first request to IQM, shares one login
//! among all concurrent callers, adds `Authorization: Bearer …` and [`X-IAA-OW-ID`](OW_ID_HEADER)
//! to requests for IQM's origin (and to nothing else), renews the token before it expires, and
//! renews once and replays once on a 401.
//!
//! ```
//! # fn main() -> Result<(), iqm_auth::ConfigError> {
//! let auth = iqm_auth::IqmAuth::builder()
//!     .client_credentials("client-id", "client-secret")
//!     .workspace_host("acme.iqm.com")
//!     .credentials("ops@acme.com", "password")
//!     .build()?; // sends nothing yet
//! let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.clone())
//!     .build();
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! - Failures are [`AuthError`]s, classified by [`AuthError::class`] into a [`FailureClass`];
//!   they carry IQM's own messages ([`IqmMessage`]) and never a secret ([`Secret`]).
//! - [`IqmAuth::stats`] gives counters ([`Stats`]) for health checks; the `metrics` feature
//!   publishes them. [`IqmAuth::status`] tells what the cache, the token store and the shared
//!   session hold, without an auth call.
//! - A [`TokenStore`] keeps the session across restarts ([`MemoryTokenStore`], and
//!   `FileTokenStore` with the `file-store` feature).
//! - The `test-util` feature adds `testing::FakeIqm`, a fake IQM server on loopback for tests of
//!   your own code, and `testing::ManualClock`.
//! - The `cli` feature builds the `iqm-auth` command: a token, a command or one request with it,
//!   and the session's status, for scripts and operators, from the session the services use.
//!
//! The [README](https://docs.rs/crate/iqm-auth/latest/source/README.md) covers failure
//! behaviour, several accounts in one service, and measured performance.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, unsafe_code)]
#![warn(
    rust_2018_idioms,
    unreachable_pub,
    missing_debug_implementations,
    clippy::await_holding_lock,
    clippy::dbg_macro,
    clippy::todo,
    clippy::unwrap_used
)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod account;
mod auth;
mod auth_api;
mod clock;
mod config;
mod error;
mod fleet;
mod iqm_api;
mod limit;
mod middleware;
mod secret;
mod session;
mod stats;
mod status;
mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod token;

pub use auth::IqmAuth;
pub use auth_api::AuthApi;
pub use clock::{Clock, SystemClock};
pub use config::IqmAuthBuilder;
pub use error::{AuthEndpoint, AuthError, ConfigError, FailureClass, IqmMessage, RateLimitCause};
pub use fleet::{
    CallAllowance, CoordinatorError, Failure, Lease, MemoryCoordinator, Pace, Publication,
    SessionCoordinator, SharedTokens, Turn,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use fleet::{RedisSession, RedisSessionBuilder};
pub use middleware::OW_ID_HEADER;
pub use reqwest_middleware;
pub use secret::Secret;
pub use stats::Stats;
pub use status::{LeaseState, SessionStatus, SharedStatus, TokenStatus};
#[cfg(feature = "file-store")]
pub use store::FileTokenStore;
pub use store::{MemoryTokenStore, StoreError, StoredTokens, TokenStore};
pub use token::TokenSet;

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::{AuthEndpoint, AuthError, TokenSet};

    /// Reads an answer of IQM's login or token endpoint, as the layer does.
    ///
    /// # Errors
    /// The [`AuthError`] the layer would report for this answer.
    pub fn parse_token_answer(
        endpoint: AuthEndpoint,
        status: http::StatusCode,
        body: &[u8],
    ) -> Result<TokenSet, AuthError> {
        crate::iqm_api::parse_token_answer(endpoint, status, body)
    }
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
