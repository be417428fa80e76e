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

    let counters: Vec<(String, Vec<String>, u64)> = snapshotter
        .snapshot()
        .into_vec()
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
    assert_eq!(count("iqm_auth_logins_total", None), 1);
    assert_eq!(count("iqm_auth_refreshes_total", None), 1);
    assert_eq!(
        count("iqm_auth_renewals_total", Some("reason=first_use")),
        1
    );
    assert_eq!(
        count("iqm_auth_renewals_total", Some("reason=unauthorized")),
        1
    );
    assert_eq!(count("iqm_auth_unauthorized_replays_total", None), 1);
    assert_eq!(auth.stats().logins, 1);
}
