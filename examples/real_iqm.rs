//! Talks to the real IQM with credentials from the environment:
//!
//! ```sh
//! IQM_CLIENT_ID=… IQM_CLIENT_SECRET=… IQM_WORKSPACE_HOST=acme.iqm.com \
//! IQM_EMAIL=… IQM_PASSWORD=… cargo run --example real_iqm
//! ```
//!
//! Logs in, calls one read-only endpoint (`GET /api/v3/ua/profile`), and prints the status and
//! the workspace id. It prints nothing secret.

use std::process::ExitCode;

use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::{self, ClientBuilder};

#[tokio::main]
async fn main() -> ExitCode {
    let auth = match IqmAuth::from_env() {
        Ok(auth) => auth,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let http = match reqwest::Client::builder()
        .redirect(auth.redirect_policy())
        .build()
    {
        Ok(http) => http,
        Err(err) => {
            eprintln!("could not build the HTTP client: {err}");
            return ExitCode::FAILURE;
        }
    };
    let client = ClientBuilder::new(http).with(auth.clone()).build();
    let url = match auth.base_url().join("api/v3/ua/profile") {
        Ok(url) => url,
        Err(err) => {
            eprintln!("bad base URL: {err}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send().await {
        Ok(response) => {
            println!("GET /api/v3/ua/profile: {}", response.status());
            println!("workspace id (owId): {:?}", auth.ow_id());
            println!("{:?}", auth.stats());
            ExitCode::SUCCESS
        }
        Err(reqwest_middleware::Error::Middleware(err)) => {
            match err.downcast_ref::<iqm_auth::AuthError>() {
                Some(auth_err) => eprintln!("IQM authentication failed: {auth_err}"),
                None => eprintln!("request failed: {err}"),
            }
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("request failed: {err}");
            ExitCode::FAILURE
        }
    }
}
