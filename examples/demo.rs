//! The crate's main demo: runs against the bundled fake IQM server on loopback, no credentials
//! needed. `cargo run --example demo`
//!
//! Shows one login for many concurrent calls, a renewal ahead of expiry, and a 401 recovery,
//! printing what the fake IQM server counted.

use std::time::{Duration, Instant};

use futures::future::join_all;
use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::testing::FakeIqm;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iqm = FakeIqm::start().await?;
    // Short-lived tokens, so the demo sees a renewal within seconds.
    iqm.set_token_lifetime(Duration::from_secs(2));
    println!("fake IQM listening at {}", iqm.base_url());

    let auth = iqm.auth_builder().build()?;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    println!("built {auth:?}\n");

    println!("1. 200 concurrent requests on a cold cache");
    let responses = join_all((0..200).map(|i| {
        client
            .get(iqm.url(&format!("/api/v3/campaigns/{i}")))
            .send()
    }))
    .await;
    let ok = responses
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    println!("   {ok}/200 answered 200; logins: {}\n", iqm.logins());

    println!("2. requests keep flowing while 2-second tokens are renewed in the background");
    let started = Instant::now();
    let mut sent = 0;
    let mut ok = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let response = client.get(iqm.url("/api/v3/campaigns")).send().await?;
        sent += 1;
        ok += usize::from(response.status() == 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "   {ok}/{sent} answered 200; refreshes: {}, logins: {}, 401s: {}\n",
        iqm.refreshes(),
        iqm.logins(),
        iqm.unauthorized()
    );

    println!("3. IQM revokes every access token");
    iqm.revoke_all_access_tokens();
    let status = client
        .get(iqm.url("/api/v3/campaigns"))
        .send()
        .await?
        .status();
    let stats = auth.stats();
    println!(
        "   the next request answered {status} after {} renewal and {} replay (401s seen by IQM: {})\n",
        stats.renewals_unauthorized,
        stats.unauthorized_replays,
        iqm.unauthorized()
    );

    println!("totals: {stats:#?}");
    Ok(())
}
