//! Several IQM accounts in one service: one layer and one client per account over one shared
//! `reqwest::Client`, and what stacking two layers for one origin does.

use iqm_auth::reqwest_middleware::ClientBuilder;

use crate::support::Harness;

#[tokio::test]
async fn two_accounts_share_one_connection_pool_and_log_in_once_each() {
    let h = Harness::start().await;
    let second = h.iqm.auth_builder().build().unwrap();
    let http = reqwest::Client::new();
    let first_client = ClientBuilder::new(http.clone())
        .with(h.auth.clone())
        .build();
    let second_client = ClientBuilder::new(http).with(second.clone()).build();

    for _ in 0..3 {
        for client in [&first_client, &second_client] {
            let status = client.get(h.iqm.url("/x")).send().await.unwrap().status();
            assert_eq!(status, 200);
        }
    }

    assert_eq!((h.auth.stats().logins, second.stats().logins), (1, 1));
    assert_eq!(h.iqm.logins(), 2);
}

#[tokio::test]
async fn of_two_layers_stacked_for_one_origin_the_first_wins() {
    let h = Harness::start().await;
    let inner = h.iqm.auth_builder().build().unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(h.auth.clone())
        .with(inner.clone())
        .build();

    for _ in 0..3 {
        let status = client.get(h.iqm.url("/x")).send().await.unwrap().status();
        assert_eq!(status, 200);
    }

    // The inner layer sees the outer one's Authorization header and leaves the request alone.
    assert_eq!((h.auth.stats().logins, inner.stats().logins), (1, 0));
    assert_eq!(h.iqm.logins(), 1);
    assert!(h.iqm.seen_requests().iter().all(|r| r.valid_bearer));
}
