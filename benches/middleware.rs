//! Criterion benches of the layer's cost per request.
//!
//! `cargo bench --bench middleware`. Every group measures iqm-auth against baselines in the
//! same run: (a) no middleware, (b) a trivial middleware inserting static headers.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware};
use iqm_auth::testing::FakeIqm;
use tokio::runtime::Runtime;

mod support;
use support::{StaticBearer, canned_client, warmed_layers};

fn warmed(rt: &Runtime) -> (FakeIqm, IqmAuth, IqmAuth) {
    rt.block_on(warmed_layers())
}

fn stacks(
    rt: &Runtime,
    iqm_auth: IqmAuth,
    no_replay: IqmAuth,
) -> Vec<(&'static str, ClientWithMiddleware)> {
    let _guard = rt.enter();
    vec![
        ("a_none", canned_client(None)),
        (
            "b_static_header",
            canned_client(Some(Arc::new(StaticBearer::dummy()))),
        ),
        (
            "iqm_auth",
            canned_client(Some(Arc::new(iqm_auth) as Arc<dyn Middleware>)),
        ),
        (
            "iqm_auth_no_replay",
            canned_client(Some(Arc::new(no_replay) as Arc<dyn Middleware>)),
        ),
    ]
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (iqm, auth, no_replay) = warmed(&rt);
    let url = iqm.url("/api/v3/campaigns");
    let mut group = c.benchmark_group("hot_path");
    for (name, client) in stacks(&rt, auth, no_replay) {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_batched(
                || client.get(&url).build().expect("request"),
                |request| {
                    let client = &client;
                    async move {
                        let response = client.execute(request).await.expect("canned answer");
                        assert_eq!(response.status(), 200);
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn contention(c: &mut Criterion) {
    const TASKS: u64 = 64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (iqm, auth, no_replay) = warmed(&rt);
    let url = iqm.url("/api/v3/campaigns");
    let mut group = c.benchmark_group("contention_64_tasks");
    for (name, client) in stacks(&rt, auth, no_replay) {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let per_task = iters.div_ceil(TASKS);
                    let started = std::time::Instant::now();
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let client = client.clone();
                            let url = url.clone();
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    let request = client.get(&url).build().expect("request");
                                    client.execute(request).await.expect("canned answer");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                    // Per request, scaled back to the `iters` criterion asked for.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * TASKS) as f64)
                }
            });
        });
    }
    group.finish();
}

fn loopback_round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (iqm, auth, _) = warmed(&rt);
    let token = rt.block_on(auth.access_token()).expect("token");
    let ow_id = auth.ow_id().expect("owId");
    let _guard = rt.enter();
    let baseline = StaticBearer(
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        HeaderValue::from(ow_id),
    );
    let clients = [
        (
            "b_static_header",
            ClientBuilder::new(reqwest::Client::new())
                .with(baseline)
                .build(),
        ),
        (
            "iqm_auth",
            ClientBuilder::new(reqwest::Client::new())
                .with(auth)
                .build(),
        ),
    ];
    let url = iqm.url("/api/v3/campaigns");
    let mut group = c.benchmark_group("loopback_round_trip");
    for (name, client) in clients {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let client = &client;
                let url = &url;
                async move {
                    let response = client.get(url).send().await.expect("answer");
                    assert_eq!(response.status(), 200);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path, contention, loopback_round_trip);
criterion_main!(benches);
