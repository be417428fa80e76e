//! The fleet through Redis: what 50 replica processes cost at IQM and in Redis.
//!
//! `cargo bench --bench fleet --features redis` (needs `redis-server` on the PATH). Prints a
//! report: logins for 50 processes started together, renewals for a 401 storm across them, the
//! Redis commands and bytes each costs per replica (`INFO commandstats`, `INFO stats`), the same
//! for a storm whose lease holder crashes mid-login (the others wait out the lease TTL), the
//! time a joining replica takes to get a token from Redis as a ratio to a login against the fake
//! IQM (measured in the same run), and Redis commands per 1,000 steady-state requests.

#[path = "../tests/fleet/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../tests/fleet/replica.rs"]
#[allow(dead_code)]
mod replica;

use std::time::{Duration, Instant};

use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::testing::FakeIqm;
use iqm_auth::{IqmAuth, RedisSession};
use redis_server::RedisServer;
use replica::{Replica, ReplicaConfig};

const REPLICAS: usize = 50;
const ROUNDS: usize = 5;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// What Redis has served so far: commands sent to it (script calls and script loads; the
/// commands the scripts run inside Redis, which `INFO commandstats` counts too, and the `INFO`
/// calls that measure it are left out) and bytes in and out.
#[derive(Debug, Clone, Copy)]
struct Load {
    commands: u64,
    bytes: u64,
}

fn load(redis: &RedisServer) -> Load {
    let commands = redis
        .command_calls()
        .iter()
        .filter(|(name, _)| name.starts_with("eval") || name.as_str() == "script|load")
        .map(|(_, calls)| calls)
        .sum();
    let info = redis.raw("INFO stats\r\n").expect("INFO stats");
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    Load {
        commands,
        bytes: field("total_net_input_bytes") + field("total_net_output_bytes"),
    }
}

/// Commands and bytes per replica between two loads.
fn per_replica(before: Load, after: Load) -> String {
    format!(
        "{:.1} commands, {:.0} bytes per replica",
        (after.commands - before.commands) as f64 / REPLICAS as f64,
        (after.bytes - before.bytes) as f64 / REPLICAS as f64,
    )
}

fn main() {
    if replica::is_replica() {
        replica::run();
        return;
    }
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let iqm = runtime.block_on(FakeIqm::start()).expect("fake IQM");

    println!("fleet of {REPLICAS} processes, {ROUNDS} rounds (each its own namespace)");
    for round in 0..ROUNDS {
        let logins = iqm.logins();
        let mut config = ReplicaConfig::new(&iqm, &redis.url(), "get:2,wait,get:2");
        config.namespace = Some(format!("bench-{round}"));
        let started = Instant::now();
        let cold_load = load(&redis);
        let mut replicas: Vec<Replica> = (0..REPLICAS).map(|_| Replica::spawn(&config)).collect();
        for replica in &replicas {
            replica.wait_until_waiting();
        }
        let cold = started.elapsed();
        let cold_cost = per_replica(cold_load, load(&redis));
        let cold_logins = iqm.logins() - logins;
        let (logins, refreshes_before) = (iqm.logins(), iqm.refreshes());
        iqm.revoke_all_access_tokens();
        let storm_load = load(&redis);
        for replica in &mut replicas {
            replica.go();
        }
        let reports: Vec<_> = replicas.into_iter().map(Replica::finish).collect();
        let storm_cost = per_replica(storm_load, load(&redis));
        let failed: u64 = reports.iter().map(|r| r.failed).sum();
        println!(
            "  round {}: cold start {cold_logins} login(s) in {cold:.2?} ({cold_cost}); 401 storm {} renewal(s) at IQM ({storm_cost}); {failed} failed requests",
            round + 1,
            iqm.logins() - logins + iqm.refreshes() - refreshes_before,
        );
    }

    // A cold start whose lease holder crashes mid-login: the others wait out the lease TTL
    // (the default, 20 s), polling the generation, then one takes over.
    iqm.set_login_delay(Duration::from_secs(30));
    let mut config = ReplicaConfig::new(&iqm, &redis.url(), "get:1");
    config.namespace = Some("bench-crash".to_owned());
    let logins = iqm.logins();
    let crash_load = load(&redis);
    let started = Instant::now();
    let holder = Replica::spawn(&config);
    while iqm.logins() == logins {
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiters: Vec<Replica> = (1..REPLICAS).map(|_| Replica::spawn(&config)).collect();
    std::thread::sleep(Duration::from_millis(500));
    iqm.set_login_delay(Duration::ZERO);
    holder.kill();
    let reports: Vec<_> = waiters.into_iter().map(Replica::finish).collect();
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    println!(
        "  holder crashed mid-login: {} more login(s), all {} others served in {:.2?} ({}); {failed} failed requests",
        iqm.logins() - logins,
        REPLICAS - 1,
        started.elapsed(),
        per_replica(crash_load, load(&redis)),
    );

    // A joining replica's first token: from Redis, against a login at the fake (same run).
    let shared = || {
        RedisSession::builder(redis.url())
            .namespace("bench-join")
            .build()
            .expect("redis session")
    };
    runtime
        .block_on(
            iqm.auth_builder()
                .shared_session(shared())
                .build()
                .expect("layer")
                .access_token(),
        )
        .expect("first login");
    let mut from_redis = Vec::new();
    let mut by_login = Vec::new();
    for _ in 0..30 {
        let joining = iqm
            .auth_builder()
            .shared_session(shared())
            .build()
            .expect("layer");
        let started = Instant::now();
        runtime
            .block_on(joining.access_token())
            .expect("token from Redis");
        from_redis.push(started.elapsed());
        assert_eq!(joining.stats().logins, 0);

        let alone = iqm.auth_builder().build().expect("layer");
        let started = Instant::now();
        runtime.block_on(alone.access_token()).expect("login");
        by_login.push(started.elapsed());
    }
    let (redis_time, login_time) = (median(from_redis), median(by_login));
    println!(
        "joining replica, first token: from Redis {redis_time:.2?}, by login at the fake {login_time:.2?} (median of 30): ratio {:.2}",
        redis_time.as_secs_f64() / login_time.as_secs_f64()
    );

    // Redis commands per 1,000 requests in steady state.
    let auth: IqmAuth = iqm
        .auth_builder()
        .shared_session(shared())
        .build()
        .expect("layer");
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth)
        .build();
    let url = iqm.url("/api/v3/campaigns");
    runtime.block_on(client.get(&url).send()).expect("warm-up");
    let before = redis.command_calls();
    runtime.block_on(async {
        for _ in 0..1000 {
            client.get(&url).send().await.expect("request");
        }
    });
    let after = redis.command_calls();
    let commands: u64 = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| calls - before.get(name).copied().unwrap_or(0))
        .sum();
    println!("Redis commands per 1,000 steady-state requests: {commands}");
}
