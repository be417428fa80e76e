//! Hundreds of tasks sharing one client, against the bundled fake IQM on loopback, while
//! 2-second tokens are renewed in the background: one login, no request waits for a renewal,
//! no 401. `cargo run --release --example many_tasks`

use std::time::{Duration, Instant};

use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::testing::FakeIqm;

const TASKS: usize = 500;
const REQUESTS_PER_TASK: usize = 40;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iqm = FakeIqm::start().await?;
    iqm.set_token_lifetime(Duration::from_secs(2));
    let auth = iqm.auth_builder().build()?;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let client = client.clone();
            let url = iqm.url(&format!("/api/v3/campaigns/{task}"));
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..REQUESTS_PER_TASK {
                    if client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                    {
                        ok += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await?;
    }
    let elapsed = started.elapsed();

    let stats = auth.stats();
    println!("{TASKS} tasks × {REQUESTS_PER_TASK} requests in {elapsed:.2?}: {ok} answered 200");
    println!(
        "logins {}, refreshes {} (background: {}), renewals a request waited for {}, 401s {}",
        stats.logins,
        stats.refreshes,
        stats.renewals_proactive,
        stats.renewals_expired + stats.renewals_unauthorized,
        iqm.unauthorized()
    );
    Ok(())
}
