//! Test helpers for code that talks to IQM: a real HTTP fake of IQM's auth endpoints and API on
//! loopback, and a clock moved by hand. Enabled by the `test-util` feature.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use iqm_auth::testing::FakeIqm;
//!
//! let iqm = FakeIqm::start().await?;
//! let auth = iqm.auth_builder().build()?;
//! let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth)
//!     .build();
//!
//! let response = client.get(iqm.url("/api/v3/campaigns")).send().await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(iqm.logins(), 1);
//! # Ok(())
//! # }
//! ```

mod answer;
mod clock;
mod fake_iqm;
mod limits;
mod routes;
mod server;

pub use answer::Answer;
pub use clock::ManualClock;
pub use fake_iqm::{
    CLIENT_ID, CLIENT_SECRET, EMAIL, FakeIqm, OW_ID, PASSWORD, SeenRequest, WORKSPACE_HOST,
};
pub use limits::Call;
