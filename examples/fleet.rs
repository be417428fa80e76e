//! A fleet of replica processes sharing one IQM session through Redis, against the bundled
//! fake IQM. `cargo run --example fleet --features redis` (needs `redis-server` on the PATH, or
//! `REDIS_URL` pointing at a Redis or Valkey to use; `REPLICAS` sets the fleet's size, 20 by
//! default).
//!
//! The replicas start together on a cold cache, then IQM revokes every token while all of them
//! send requests; the fake counts the logins and renewals that cost.

#[path = "../tests/fleet/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../tests/fleet/replica.rs"]
#[allow(dead_code)]
mod replica;

use iqm_auth::testing::FakeIqm;
use replica::{Replica, ReplicaConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if replica::is_replica() {
        replica::run();
        return Ok(());
    }
    let size: usize = std::env::var("REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let local_redis;
    let redis_url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            local_redis = redis_server::RedisServer::start()
                .ok_or("redis-server is not installed (apt-get install redis-server), and REDIS_URL is not set")?;
            local_redis.url()
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let iqm = runtime.block_on(FakeIqm::start())?;
    println!("fake IQM at {}, {size} replica processes", iqm.base_url());

    let mut config = ReplicaConfig::new(&iqm, &redis_url, "get:5,wait,get:5");
    config.namespace = Some(format!("fleet-example-{}", std::process::id()));
    let mut replicas: Vec<Replica> = (0..size).map(|_| Replica::spawn(&config)).collect();
    for replica in &replicas {
        replica.wait_until_waiting();
    }
    println!(
        "1. cold start, 5 requests a replica: {} login(s), {} refresh(es) at IQM",
        iqm.logins(),
        iqm.refreshes()
    );

    let (logins, refreshes) = (iqm.logins(), iqm.refreshes());
    iqm.revoke_all_access_tokens();
    for replica in &mut replicas {
        replica.go();
    }
    let reports: Vec<_> = replicas.into_iter().map(Replica::finish).collect();
    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    println!(
        "2. IQM revoked every token: {} login(s) and {} refresh(es) for the whole fleet, {} requests answered 401 and replayed",
        iqm.logins() - logins,
        iqm.refreshes() - refreshes,
        iqm.unauthorized()
    );
    println!(
        "requests: {ok} answered 200, {failed} failed; refresh tokens presented twice: {}",
        iqm.refresh_reuses()
    );
    if failed > 0 || iqm.logins() + iqm.refreshes() != 2 {
        return Err("the fleet did not behave as one process".into());
    }
    Ok(())
}
