//! What pacing (`request_rate`) costs a request whose turn is always now: pacing on against
//! pacing off, measured in the same run, in one process and through a shared session in Redis.
//!
//! `cargo bench --bench pacing --features redis` (the fleet part needs `redis-server` on the
//! PATH; without the feature only the in-process part runs). Prints medians of 31 rounds, each
//! measuring pacing off and on back to back.

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::{ClientWithMiddleware, Middleware};
use iqm_auth::testing::FakeIqm;
use tokio::runtime::Runtime;

use support::canned_client;

const ROUNDS: usize = 31;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The mean time of `n` requests in a row through `client`, in nanoseconds.
fn per_request(rt: &Runtime, client: &ClientWithMiddleware, url: &str, n: u32) -> f64 {
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..n {
            let request = client.get(url).build().expect("request");
            let response = client.execute(request).await.expect("answer");
            assert_eq!(response.status(), 200);
        }
        started.elapsed().as_nanos() as f64 / f64::from(n)
    })
}

/// Medians over interleaved rounds: (off ns, on ns, on − off ns, on / off), the last two
/// taken per round.
fn compare(rt: &Runtime, off: &IqmAuth, on: &IqmAuth, url: &str, n: u32) -> (f64, f64, f64, f64) {
    let clients = {
        let _guard = rt.enter();
        [off, on].map(|auth| canned_client(Some(Arc::new(auth.clone()) as Arc<dyn Middleware>)))
    };
    for client in &clients {
        per_request(rt, client, url, n / 10);
    }
    let (mut offs, mut ons, mut added, mut ratios) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let off_ns = per_request(rt, &clients[0], url, n);
        let on_ns = per_request(rt, &clients[1], url, n);
        offs.push(off_ns);
        ons.push(on_ns);
        added.push(on_ns - off_ns);
        ratios.push(on_ns / off_ns);
    }
    let waited = on.stats().requests_paced;
    assert_eq!(waited, 0, "no request waited for its turn");
    (median(offs), median(ons), median(added), median(ratios))
}

/// A rate whose turn is always now: one request a nanosecond.
fn never_waits(builder: iqm_auth::IqmAuthBuilder) -> iqm_auth::IqmAuthBuilder {
    builder.request_rate_per(u32::MAX, Duration::from_secs(4))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let iqm = rt.block_on(FakeIqm::start()).expect("fake IQM");
    let url = iqm.url("/api/v3/campaigns");
    let off = iqm.auth_builder().build().expect("layer");
    let on = never_waits(iqm.auth_builder()).build().expect("layer");
    for auth in [&off, &on] {
        rt.block_on(auth.access_token()).expect("login");
    }
    let (off_ns, on_ns, added, ratio) = compare(&rt, &off, &on, &url, 20_000);
    println!(
        "in one process, canned answer: pacing off {off_ns:.0} ns, on {on_ns:.0} ns a request; pacing adds {added:.0} ns, ratio {ratio:.2} (medians of {ROUNDS} rounds)"
    );
    #[cfg(feature = "redis")]
    fleet(&rt, &iqm, &url);
}

/// Through a shared session in Redis: pacing on takes each request's turn in one script.
#[cfg(feature = "redis")]
fn fleet(rt: &Runtime, iqm: &FakeIqm, url: &str) {
    #[path = "../tests/fleet/redis_server.rs"]
    #[allow(dead_code)]
    mod redis_server;

    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let shared = |namespace: &str| {
        iqm_auth::RedisSession::builder(redis.url())
            .namespace(namespace)
            .build()
            .expect("redis session")
    };
    let off = iqm
        .auth_builder()
        .shared_session(shared("bench-off"))
        .build()
        .expect("layer");
    let on = never_waits(iqm.auth_builder())
        .shared_session(shared("bench-on"))
        .build()
        .expect("layer");
    for auth in [&off, &on] {
        rt.block_on(auth.access_token()).expect("login");
    }
    let (off_ns, on_ns, added, ratio) = compare(rt, &off, &on, url, 500);
    println!(
        "through Redis, canned answer: pacing off {:.1} µs, on {:.1} µs a request; the turn's round trip adds {:.1} µs, ratio {ratio:.1} (medians of {ROUNDS} rounds)",
        off_ns / 1000.0,
        on_ns / 1000.0,
        added / 1000.0
    );
}
