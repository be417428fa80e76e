//! The `metrics` feature publishes the layer's counters through the `metrics` facade. A binary
//! of its own, since the recorder is global to the process.
#![cfg(feature = "metrics")]

use iqm_auth::testing::FakeIqm;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn counters_are_published_through_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let iqm = FakeIqm::start().await.unwrap();
    let auth = iqm.auth_builder().build().unwrap();
    let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    assert_eq!(
        client.get(iqm.url("/x")).send().await.unwrap().status(),
        200
    );
    iqm.revoke_all_access_tokens();
    assert_eq!(
        client.get(iqm.url("/x")).send().await.unwrap().status(),
        200
    );
    // IQM's rate limit: a 429 (its window then refuses a request that may not wait), and
    // requests that wait for their turns (one request per 100 ms).
    let impatient = iqm
        .auth_builder()
        .rate_limit_wait(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let impatient = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(impatient)
        .build();
    iqm.queue_api_rate_limit(Some(30));
    let limited = impatient.get(iqm.url("/x")).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(impatient.get(iqm.url("/x")).send().await.is_err());
    let paced = iqm
        .auth_builder()
        .request_rate_per(1, std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let paced = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(paced)
        .build();
    for _ in 0..2 {
        assert_eq!(paced.get(iqm.url("/x")).send().await.unwrap().status(), 200);
    }

    let snapshot = snapshotter.snapshot().into_vec();
    let waits = snapshot
        .iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(values) if key.key().name() == "iqm_auth_pacing_wait_seconds" => {
                Some(values.len())
            }
            _ => None,
        })
        .sum::<usize>();
    let counters: Vec<(String, Vec<String>, u64)> = snapshot
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect();
    let count = |name: &str, label: Option<&str>| {
        counters
            .iter()
            .filter(|(n, labels, _)| {
                n == name && label.is_none_or(|l| labels.iter().any(|x| x == l))
            })
            .map(|(_, _, v)| v)
            .sum::<u64>()
    };
    // Three layers logged in: `auth`, `impatient` and `paced`.
    assert_eq!(count("iqm_auth_logins_total", None), 3);
    assert_eq!(count("iqm_auth_refreshes_total", None), 1);
    assert_eq!(
        count("iqm_auth_renewals_total", Some("reason=first_use")),
        3
    );
    assert_eq!(
        count("iqm_auth_renewals_total", Some("reason=unauthorized")),
        1
    );
    assert_eq!(count("iqm_auth_unauthorized_replays_total", None), 1);
    assert_eq!(auth.stats().logins, 1);
    assert_eq!(count("iqm_auth_rate_limited_total", None), 1);
    assert_eq!(count("iqm_auth_requests_refused_total", None), 1);
    // Both of `paced`'s requests waited: the first for the turn after its login.
    assert_eq!(count("iqm_auth_requests_paced_total", None), 2);
    assert_eq!(waits, 2, "each wait recorded in the histogram");
}
