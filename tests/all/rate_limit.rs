//! IQM's rate limit (issue 16): the window a 429 closes (always on), and the pacing of
//! `request_rate`, with renewals first. In one process, against the fake IQM with its rate limit
//! on, on a clock the test moves: each instant's calls are waited for before the clock moves on,
//! so every bound is exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iqm_auth::testing::ManualClock;
use iqm_auth::{AuthError, Clock, RateLimitCause};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;

use crate::support::{Captured, Harness, auth_error, eventually};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Every call the fake received: (seconds after `t0` on its clock, path, status).
fn calls_since(h: &Harness, t0: Instant) -> Vec<(u64, String, u16)> {
    h.iqm
        .calls()
        .into_iter()
        .map(|call| (call.at.duration_since(t0).as_secs(), call.path, call.status))
        .collect()
}

/// Moves the clock one second at a time from `from` to `to` seconds, waiting after each move
/// until the fake has received `expected(seconds)` calls: every call of an instant arrives at it
/// before the clock moves on.
async fn step(
    h: &Harness,
    clock: &ManualClock,
    from: u64,
    to: u64,
    expected: impl Fn(u64) -> usize,
) {
    for elapsed in from + 1..=to {
        clock.advance(SECOND);
        let want = expected(elapsed);
        eventually(&format!("{want} calls after {elapsed} s"), || {
            h.iqm.calls().len() >= want
        })
        .await;
    }
}

/// One call every 3 s from 0 s on: the pace of 20 a minute with requests always in line.
fn every_three_seconds(elapsed: u64) -> usize {
    1 + (elapsed / 3) as usize
}

/// Issue 16, tests, first bullet: pacing 20 a minute, 60 requests from 20 tasks, a long enough
/// `rate_limit_wait`: no 429 at the fake, at most 20 calls (the login included) in any minute,
/// every request 200.
#[tokio::test]
async fn pacing_twenty_a_minute_keeps_sixty_requests_inside_iqms_limit_and_serves_all() {
    let (h, clock) = Harness::with_manual_clock_and(|b| {
        b.request_rate(20).rate_limit_wait(Duration::from_secs(300))
    })
    .await;
    h.iqm.set_rate_limit(Some(20));
    let t0 = clock.now();
    let h = Arc::new(h);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    statuses.push(h.get("/api/v3/campaigns").await.map_err(|e| e.to_string()));
                }
                statuses
            })
        })
        .collect();
    eventually("the login, then 20 requests in line", || {
        h.iqm.calls().len() == 1 && h.auth.stats().requests_waiting == 20
    })
    .await;

    // One call every 3 s: the login at 0 s, the 60 requests from 3 s to 180 s.
    step(&h, &clock, 0, 180, every_three_seconds).await;

    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    assert_eq!(statuses, vec![Ok(200); 60]);
    let calls = calls_since(&h, t0);
    assert_eq!((calls.len(), h.iqm.rate_limited()), (61, 0));
    assert_eq!(h.iqm.most_calls_within(MINUTE), 20);
    let stats = h.auth.stats();
    assert_eq!((stats.requests_paced, stats.requests_refused), (60, 0));
    assert_eq!(
        stats.pacing_wait_max,
        Duration::from_secs(60),
        "20 in line, 3 s apart"
    );
    assert_eq!(stats.requests_waiting, 0);
}

/// Issue 16, tests, first bullet: with a short `rate_limit_wait`, the requests whose turn would
/// come later fail at once (the clock has not moved), unsent, with the typed error; none of them
/// reaches the fake.
#[tokio::test]
async fn with_a_short_wait_the_excess_fails_at_once_unsent_with_the_typed_error() {
    let (h, clock) = Harness::with_manual_clock_and(|b| {
        b.request_rate(20).rate_limit_wait(Duration::from_secs(10))
    })
    .await;
    h.iqm.set_rate_limit(Some(20));
    let captured = Captured::default();
    let _guard = captured.install();
    let h = Arc::new(h);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..3 {
                    outcomes.push(
                        h.get("/api/v3/campaigns")
                            .await
                            .map_err(|e| auth_error(&e).clone()),
                    );
                }
                outcomes
            })
        })
        .collect();

    // The login goes at once; 3 requests fit in the next 10 s (at 3, 6 and 9 s); the other
    // 17 tasks' 51 requests fail before the clock moves.
    eventually("51 refusals", || h.auth.stats().requests_refused == 51).await;
    assert_eq!(h.iqm.calls().len(), 1);
    // The 3 tasks that got a turn send their 9 requests, one every 3 s.
    step(&h, &clock, 0, 27, every_three_seconds).await;

    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let ok = outcomes.iter().filter(|o| matches!(o, Ok(200))).count();
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!((ok, refused.len()), (9, 51));
    for err in refused {
        match err {
            AuthError::RateLimited {
                retry_after,
                cause: RateLimitCause::Pacing,
            } => assert!(*retry_after > Duration::from_secs(10), "{err}"),
            other => panic!("not refused for its turn: {other}"),
        }
    }
    assert_eq!((h.iqm.api_calls(), h.iqm.rate_limited()), (9, 0));
    assert_eq!(h.iqm.most_calls_within(MINUTE), 10);
    assert!(
        captured.text().contains("was not sent"),
        "{}",
        captured.text()
    );
}

/// Issue 16, tests, second bullet (renewals first): tokens expire while 40 API requests wait in
/// line; the renewal's call goes before them, within one interval (3 s) of being due, and no
/// request carries an expired token.
#[tokio::test]
async fn a_due_renewal_goes_before_forty_queued_requests_within_one_interval() {
    let (h, clock) = Harness::with_manual_clock_and(|b| {
        b.request_rate(20)
            .rate_limit_wait(Duration::from_secs(300))
            .refresh_margin(Duration::from_secs(10))
    })
    .await;
    h.iqm.set_rate_limit(Some(20));
    // Logged in at 0 s, due at 90 s, expired at 100 s; the 40 requests take until 123 s.
    h.iqm.set_token_lifetime(Duration::from_secs(100));
    let t0 = clock.now();
    let h = Arc::new(h);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/api/v3/campaigns").await.map_err(|e| e.to_string()) })
        })
        .collect();
    eventually("40 requests in line", || {
        h.iqm.calls().len() == 1 && h.auth.stats().requests_waiting == 40
    })
    .await;

    step(&h, &clock, 0, 90, every_three_seconds).await;
    // Due: the renewer's call joins the line (or has gone) before the clock moves on.
    eventually("the renewal's call in line", || {
        let waiting = h.auth.stats().requests_waiting;
        h.iqm.refreshes() == 1 || waiting == 40 - h.iqm.api_calls() + 1
    })
    .await;
    step(&h, &clock, 90, 123, every_three_seconds).await;

    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(200));
    }
    let calls = calls_since(&h, t0);
    let refreshes: Vec<u64> = calls
        .iter()
        .filter(|(_, path, _)| path == "/api/v3/ua/oauth/token")
        .map(|(at, _, _)| *at)
        .collect();
    assert_eq!(refreshes.len(), 1, "{calls:?}");
    assert!(
        (90..=93).contains(&refreshes[0]),
        "refreshed at {} s",
        refreshes[0]
    );
    assert!(h.iqm.seen_requests().iter().all(|r| r.valid_bearer));
    assert_eq!((h.iqm.unauthorized(), h.iqm.rate_limited()), (0, 0));
    assert_eq!(h.iqm.most_calls_within(MINUTE), 20);
}

/// Issue 16, tests, third bullet: without pacing, IQM answers 429 with `Retry-After: 20`:
/// exactly one request reaches the fake in those 20 s (the one that got the 429, handed back
/// as it is), whatever the callers send: API requests wait for the window, a renewal is
/// refused unsent, and all go once it opens.
#[tokio::test]
async fn a_429_closes_the_window_for_every_request_until_its_retry_after() {
    let (h, clock) = Harness::with_manual_clock(true).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    clock.advance(SECOND);
    h.iqm.queue_api_rate_limit(Some(20));
    assert_eq!(
        h.get("/x").await.unwrap(),
        429,
        "the 429 itself goes back unchanged"
    );
    let closed_at = clock.now();
    let before = h.iqm.calls().len();

    let h = Arc::new(h);
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/x").await.map_err(|e| e.to_string()) })
        })
        .collect();
    eventually("10 requests wait", || h.auth.stats().requests_waiting == 10).await;
    let renewal = h.auth.renew().await.unwrap_err();
    assert!(
        matches!(
            renewal,
            AuthError::RateLimited {
                cause: RateLimitCause::Window,
                ..
            }
        ),
        "{renewal}"
    );
    for _ in 0..19 {
        clock.advance(SECOND);
        tokio::task::yield_now().await;
    }
    assert_eq!(h.iqm.calls().len(), before, "nothing sent in the window");
    assert_eq!(h.auth.stats().rate_limited_for, Some(SECOND));

    clock.advance(SECOND);
    for task in waiting {
        assert_eq!(task.await.unwrap(), Ok(200));
    }
    let calls = h.iqm.calls();
    let in_window: Vec<u16> = calls
        .iter()
        .filter(|c| c.at >= closed_at && c.at < closed_at + Duration::from_secs(20))
        .map(|c| c.status)
        .collect();
    assert_eq!(in_window, [429], "only the request that got the 429");
    assert_eq!(calls.len(), before + 10);
    let stats = h.auth.stats();
    assert_eq!((stats.rate_limited, stats.requests_paced), (1, 10));
    assert_eq!((stats.requests_refused, stats.rate_limited_for), (1, None));
}

/// The window is IQM's `Retry-After`; without one, the rate-limit pause (10 s); and a request
/// that may not wait fails at once, unsent, saying how long the window stays closed.
#[tokio::test]
async fn a_429_without_retry_after_closes_the_window_for_the_rate_limit_pause() {
    let (h, clock) = Harness::with_manual_clock_and(|b| b.rate_limit_wait(Duration::ZERO)).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.queue_api_rate_limit(None);
    assert_eq!(h.get("/x").await.unwrap(), 429);
    let before = h.iqm.calls().len();

    clock.advance(Duration::from_secs(4));
    let err = h.get("/x").await.unwrap_err();
    assert!(
        matches!(
            auth_error(&err),
            AuthError::RateLimited { retry_after, cause: RateLimitCause::Window }
                if *retry_after == Duration::from_secs(6)
        ),
        "{err}"
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.calls().len(), before + 1);
}

/// A 429 on an auth call closes the window for API requests too.
#[tokio::test]
async fn a_429_on_a_refresh_holds_back_api_requests_too() {
    let (h, clock) = Harness::with_manual_clock_and(|b| b.rate_limit_wait(Duration::ZERO)).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm
        .set_refresh_answer(iqm_auth::testing::Answer::StatusRetryAfter(429, 20));
    assert!(h.auth.renew().await.is_err());
    let before = h.iqm.calls().len();

    let err = h.get("/x").await.unwrap_err();
    assert!(
        matches!(auth_error(&err), AuthError::RateLimited { .. }),
        "{err}"
    );
    clock.advance(Duration::from_secs(20));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(h.iqm.calls().len(), before + 1);
}

/// Issue 16, item 1: the 429 goes back unchanged, so `reqwest-retry` above the layer retries;
/// its retry waits in the layer for the window, then goes through.
#[tokio::test]
async fn a_retry_layer_above_retries_the_429_once_the_window_opens() {
    let (h, clock) = Harness::with_manual_clock(true).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    let t0 = clock.now();
    let client = iqm_auth::reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder()
                .retry_bounds(Duration::from_millis(10), Duration::from_millis(50))
                .build_with_max_retries(3),
        ))
        .with(h.auth.clone())
        .build();
    h.iqm.queue_api_rate_limit(Some(20));

    let request = tokio::spawn(client.get(h.iqm.url("/x")).send());
    eventually("the retry waits in the layer", || {
        h.auth.stats().requests_waiting == 1
    })
    .await;
    clock.advance(Duration::from_secs(20));
    let response = request.await.unwrap().unwrap();

    assert_eq!(response.status(), 200);
    let calls = calls_since(&h, t0);
    let statuses: Vec<(u64, u16)> = calls.iter().skip(1).map(|(at, _, s)| (*at, *s)).collect();
    assert_eq!(statuses, [(0, 200), (0, 429), (20, 200)]);
}

/// Issue 16, tests, fifth bullet (cancellation): 10 requests waiting for their turn are dropped;
/// the next request takes the first free turn, 3 s after the last call, not the 11th.
#[tokio::test]
async fn dropped_requests_give_their_turns_to_the_next_request() {
    let (h, clock) = Harness::with_manual_clock_and(|b| {
        b.request_rate(20).rate_limit_wait(Duration::from_secs(300))
    })
    .await;
    let t0 = clock.now();
    let h = Arc::new(h);
    let first = tokio::spawn({
        let h = h.clone();
        async move { h.get("/x").await.unwrap() }
    });
    eventually("the login, then the request in line", || {
        h.iqm.calls().len() == 1 && h.auth.stats().requests_waiting == 1
    })
    .await;
    step(&h, &clock, 0, 3, every_three_seconds).await;
    assert_eq!(first.await.unwrap(), 200);

    let dropped: Vec<_> = (0..10)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.get("/x").await })
        })
        .collect();
    eventually("10 in line", || h.auth.stats().requests_waiting == 10).await;
    for task in &dropped {
        task.abort();
    }
    eventually("the line is empty", || h.auth.stats().requests_waiting == 0).await;
    let next = tokio::spawn({
        let h = h.clone();
        async move { h.get("/x").await.unwrap() }
    });
    eventually("the next request waits", || {
        h.auth.stats().requests_waiting == 1
    })
    .await;
    step(&h, &clock, 3, 6, every_three_seconds).await;

    assert_eq!(next.await.unwrap(), 200);
    let calls = calls_since(&h, t0);
    let times: Vec<u64> = calls.iter().map(|(at, _, _)| *at).collect();
    assert_eq!(times, [0, 3, 6], "{calls:?}");
    for task in dropped {
        assert!(task.await.unwrap_err().is_cancelled());
    }
}
