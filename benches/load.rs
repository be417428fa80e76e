//! Measurements criterion does not fit: heap allocations per request, login and 401 storms,
//! and request latency while tokens are renewed under load.
//!
//! `cargo bench --bench load`. Prints a report; every figure is measured against a baseline in
//! the same run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::future::join_all;
use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware};
use iqm_auth::testing::FakeIqm;

mod support;
use support::{StaticBearer, canned_client, warmed_layers};

/// Counts heap allocations, to compare the layer with the baselines per request.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        allocations().await;
        storms().await;
        renewal_under_load().await;
    });
}

async fn allocations() {
    const REQUESTS: u64 = 20_000;
    let (iqm, auth, no_replay) = warmed_layers().await;
    let url = iqm.url("/api/v3/campaigns");
    let stacks: [(&str, Option<Arc<dyn Middleware>>); 4] = [
        ("(a) no middleware", None),
        ("(b) static header", Some(Arc::new(StaticBearer::dummy()))),
        ("iqm-auth", Some(Arc::new(auth))),
        ("iqm-auth, replay off", Some(Arc::new(no_replay))),
    ];
    println!("== heap allocations per request (canned answer, no network)");
    let mut baseline = 0.0;
    for (name, layer) in stacks {
        let client = canned_client(layer);
        // Warm up, then count over many requests; building the request is not counted.
        for _ in 0..100 {
            send(&client, &url).await;
        }
        let mut counted = 0;
        for _ in 0..REQUESTS {
            let request = client.get(&url).build().expect("request");
            let before = ALLOCATIONS.load(Relaxed);
            let response = client.execute(request).await.expect("answer");
            drop(response);
            counted += ALLOCATIONS.load(Relaxed) - before;
        }
        let per_request = counted as f64 / REQUESTS as f64;
        if name.starts_with("(b)") {
            baseline = per_request;
        }
        let versus = if baseline > 0.0 {
            format!("  ({:+.2} vs (b))", per_request - baseline)
        } else {
            String::new()
        };
        println!("   {name:<22} {per_request:>6.2}{versus}");
    }
}

async fn send(client: &ClientWithMiddleware, url: &str) {
    let request = client.get(url).build().expect("request");
    client.execute(request).await.expect("answer");
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn storms() {
    const CALLERS: usize = 1000;
    const RUNS: usize = 5;
    println!(
        "\n== storms: {CALLERS} concurrent callers against the fake IQM on loopback (median of {RUNS} runs)"
    );

    let iqm = FakeIqm::start().await.expect("fake IQM");
    let url = iqm.url("/api/v3/campaigns");

    let mut one_login = Vec::new();
    let mut cold_storm = Vec::new();
    let mut logins = Vec::new();
    for _ in 0..RUNS {
        let auth = iqm.auth_builder().build().expect("config");
        let started = Instant::now();
        auth.access_token().await.expect("login");
        one_login.push(started.elapsed());

        let auth = iqm.auth_builder().build().expect("config");
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .build();
        let started = Instant::now();
        let answers = join_all((0..CALLERS).map(|_| client.get(&url).send())).await;
        cold_storm.push(started.elapsed());
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
        );
        logins.push(auth.stats().logins);
    }
    let (login, storm) = (median(one_login), median(cold_storm));
    println!(
        "   cold cache: logins per storm {logins:?}; one login {login:.2?}; all {CALLERS} answers {storm:.2?}; added by the storm {:.2?}",
        storm.saturating_sub(login)
    );

    let mut one_refresh = Vec::new();
    let mut stale_storm = Vec::new();
    let mut renewals = Vec::new();
    for _ in 0..RUNS {
        let auth = iqm.auth_builder().build().expect("config");
        auth.access_token().await.expect("login");
        let started = Instant::now();
        auth.renew().await.expect("refresh");
        one_refresh.push(started.elapsed());

        let client = ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .build();
        // Warm the connection pool, so the storm measures the 401 handling, not connects.
        join_all((0..CALLERS).map(|_| client.get(&url).send())).await;
        let before = auth.stats();
        iqm.revoke_all_access_tokens();
        let started = Instant::now();
        let answers = join_all((0..CALLERS).map(|_| client.get(&url).send())).await;
        stale_storm.push(started.elapsed());
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
        );
        renewals.push(auth.stats().renewals_unauthorized - before.renewals_unauthorized);
    }
    let (refresh, storm) = (median(one_refresh), median(stale_storm));
    println!(
        "   {CALLERS} concurrent 401s on one stale token: renewals per storm {renewals:?}; one refresh {refresh:.2?}; all {CALLERS} answers (each sent twice) {storm:.2?}; added by the storm {:.2?}",
        storm.saturating_sub(refresh)
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// Eight tasks send requests back to back for a while; reports p50 and p99 latency with tokens
/// that never need renewal, and with 2-second tokens renewed every 1.5 s (refresh calls slowed
/// to 50 ms, so a request that waited for one would show).
async fn renewal_under_load() {
    const TASKS: usize = 8;
    const RUN: Duration = Duration::from_secs(6);
    println!("\n== latency under load, {TASKS} tasks for {RUN:?} each (fake IQM on loopback)");
    for (name, lifetime) in [
        ("no renewal", Duration::from_secs(3600)),
        ("renewing every 1.5 s", Duration::from_secs(2)),
    ] {
        let iqm = FakeIqm::start().await.expect("fake IQM");
        iqm.set_token_lifetime(lifetime);
        iqm.set_refresh_delay(Duration::from_millis(50));
        let auth: IqmAuth = iqm.auth_builder().build().expect("config");
        auth.access_token().await.expect("login");
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .build();
        let url = iqm.url("/api/v3/campaigns");
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while started.elapsed() < RUN {
                        let sent = Instant::now();
                        let response = client.get(&url).send().await.expect("answer");
                        assert_eq!(response.status(), 200);
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("task"));
        }
        let stats = auth.stats();
        println!(
            "   {name:<22} requests {:>6}  p50 {:>9.1?}  p99 {:>9.1?}  refreshes {}  401s {}  renewals a request waited for {}",
            latencies.len(),
            percentile(&mut latencies, 0.50),
            percentile(&mut latencies, 0.99),
            stats.refreshes,
            iqm.unauthorized(),
            stats.renewals_expired + stats.renewals_unauthorized,
        );
    }
}
