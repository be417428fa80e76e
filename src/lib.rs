#![doc = include_str!("../README.md")]
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

mod auth;
mod clock;
mod config;
mod error;
mod iqm_api;
mod middleware;
mod secret;
mod session;
mod stats;
mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod token;

pub use auth::IqmAuth;
pub use clock::{Clock, SystemClock};
pub use config::{
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_AUTH_ATTEMPTS, DEFAULT_AUTH_TIMEOUT, DEFAULT_BASE_URL,
    DEFAULT_REFRESH_MARGIN, DEFAULT_REJECTION_COOL_DOWN, ENV_VARS, IqmAuthBuilder,
};
pub use error::{AuthEndpoint, AuthError, ConfigError, IqmMessage};
pub use iqm_api::{MAX_AUTH_BODY_BYTES, parse_token_answer};
pub use middleware::OW_ID_HEADER;
pub use reqwest_middleware;
pub use secret::Secret;
pub use stats::{RenewReason, Stats};
#[cfg(feature = "file-store")]
pub use store::FileTokenStore;
pub use store::{MemoryTokenStore, StoreError, StoredTokens, TokenStore};
pub use token::{ASSUMED_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME, TokenSet};
