//! Renewal before expiry: refresh grant first, login as fallback, margins, odd lifetimes.

use std::time::Duration;

use iqm_auth::testing::{Answer, OW_ID};
use serde_json::json;

use crate::support::{Harness, eventually};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_expired_token_is_renewed_with_the_refresh_grant_and_keeps_the_workspace_id() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let first = h.auth.access_token().await.unwrap();

    clock.advance(HOUR);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.refreshes(), 1);
    assert_ne!(h.auth.access_token().await.unwrap(), first);
    assert_eq!(h.auth.ow_id(), Some(OW_ID));
    assert!(
        h.iqm
            .seen_requests()
            .iter()
            .all(|r| r.ow_ids == [OW_ID.to_string()])
    );
    assert_eq!(h.auth.stats().renewals_expired, 1);
}

#[tokio::test]
async fn a_rotated_refresh_token_replaces_the_old_one() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    // The fake rotates refresh tokens and rejects a used one: three refreshes in a row only
    // succeed if each used the token the previous one returned.
    for _ in 0..3 {
        clock.advance(HOUR);
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    assert_eq!(h.iqm.refreshes(), 3);
    assert_eq!(h.iqm.logins(), 1);
}

#[tokio::test]
async fn a_refresh_token_that_does_not_rotate_is_kept() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_refresh_rotation(false);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    for _ in 0..2 {
        clock.advance(HOUR);
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    assert_eq!(h.iqm.refreshes(), 2);
    assert_eq!(h.iqm.logins(), 1);
}

#[tokio::test]
async fn a_rejected_refresh_falls_back_to_one_login() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.revoke_all_refresh_tokens();

    clock.advance(HOUR);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(h.iqm.refreshes(), 1);
    assert_eq!(h.iqm.logins(), 2);
}

#[tokio::test]
async fn a_garbage_refresh_answer_falls_back_to_login() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::HeaderInjection);

    clock.advance(HOUR);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!((h.iqm.refreshes(), h.iqm.logins()), (1, 2));
}

#[tokio::test]
async fn a_token_is_not_renewed_before_its_margin() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    // One hour of life, 60 s margin: at 58 minutes it is still fresh.
    clock.advance(Duration::from_secs(58 * 60));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.auth_calls(), 1);
}

#[tokio::test]
async fn inside_the_margin_the_token_is_renewed_while_requests_keep_using_it() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    clock.advance(Duration::from_secs(59 * 60 + 30));

    assert_eq!(h.get("/x").await.unwrap(), 200);

    eventually("the early renewal", || h.iqm.refreshes() == 1).await;
    eventually("the renewed token is cached", || {
        h.auth.stats().renewals_proactive == 1
    })
    .await;
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.unauthorized(), 0);
}

#[tokio::test]
async fn a_three_second_token_is_reused_for_most_of_its_life() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_token_lifetime(Duration::from_secs(3));
    for _ in 0..20 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
        clock.advance(Duration::from_millis(100));
    }
    // 2 s of the 3 s have passed: a 60 s margin clamped to 1/4 of the lifetime leaves it fresh.
    assert_eq!(h.iqm.auth_calls(), 1);
}

#[tokio::test]
async fn a_zero_lifetime_costs_at_most_one_auth_call_per_request() {
    let h = Harness::start().await;
    h.iqm.set_expires_in(Some(json!(0)));
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    // The first request logs in; each later one finds the token expired and renews it once.
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.refreshes(), 4);
}

#[tokio::test]
async fn odd_expires_in_values_never_hang_or_loop() {
    for value in [
        json!(-30),
        json!("3600"),
        json!("soon"),
        json!(null),
        json!(1.5),
        json!(1e30),
        json!(u64::MAX),
    ] {
        let h = Harness::start().await;
        h.iqm.set_expires_in(Some(value.clone()));
        for _ in 0..3 {
            assert_eq!(h.get("/x").await.unwrap(), 200, "{value}");
        }
        assert!(
            h.iqm.auth_calls() <= 3,
            "{value}: {} auth calls",
            h.iqm.auth_calls()
        );
        assert_eq!(h.iqm.logins(), 1, "{value}");
    }
}

#[tokio::test]
async fn a_token_in_use_is_renewed_in_the_background_before_it_expires() {
    let h = Harness::start().await;
    h.iqm.set_token_lifetime(Duration::from_secs(2));
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // No request is made: the background renewer refreshes at 1.5 s (2 s minus a 60 s margin
    // clamped to a quarter).
    eventually("the background refresh", || h.iqm.refreshes() == 1).await;
    assert_eq!(h.auth.stats().renewals_proactive, 1);
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.unauthorized(), 0);
}

#[tokio::test]
async fn an_unused_token_is_not_renewed_in_the_background() {
    let h = Harness::start().await;
    h.iqm.set_token_lifetime(Duration::from_millis(400));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    eventually("the first background refresh", || h.iqm.refreshes() == 1).await;
    // Nothing used the renewed token: it is left to expire, and no call is made for it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.iqm.refreshes(), 1);
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_background_renewer() {
    let h = Harness::start().await;
    h.iqm.set_token_lifetime(Duration::from_millis(400));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let Harness { iqm, auth, client } = h;
    drop(client);
    drop(auth);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(iqm.refreshes(), 0);
}

#[tokio::test]
async fn a_forced_renewal_replaces_the_token() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let before = h.auth.access_token().await.unwrap();
    h.auth.renew().await.unwrap();
    assert_ne!(h.auth.access_token().await.unwrap(), before);
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (1, 1));
    assert_eq!(h.auth.stats().renewals_forced, 1);
}

#[tokio::test]
async fn a_renewed_token_first_used_inside_its_margin_is_renewed_without_a_wait() {
    // 8 s tokens, renewed 2 s before expiry. The first token is used, so the background
    // renewer refreshes it at 6 s; nothing uses the second one until 12.7 s, inside its margin
    // (12 s to 14 s): that request is served at once and starts the next renewal.
    let h = Harness::start().await;
    h.iqm.set_token_lifetime(Duration::from_secs(8));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let started = std::time::Instant::now();
    eventually("the first background refresh", || h.iqm.refreshes() == 1).await;
    tokio::time::sleep(Duration::from_millis(12_700).saturating_sub(started.elapsed())).await;

    assert_eq!(h.get("/x").await.unwrap(), 200);

    eventually("the second refresh", || h.iqm.refreshes() == 2).await;
    let stats = h.auth.stats();
    assert_eq!(stats.renewals_proactive, 2);
    assert_eq!(stats.renewals_expired, 0);
    assert_eq!(h.iqm.logins(), 1);
    assert_eq!(h.iqm.unauthorized(), 0);
}
