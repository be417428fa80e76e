//! The edge cases issue: each scenario as the behaviour that must hold, with exact counts of
//! what IQM received.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use iqm_auth::reqwest_middleware::{self, ClientBuilder, Middleware, Next};
use iqm_auth::testing::{Answer, EMAIL, FakeIqm, ManualClock};
use iqm_auth::{AuthError, FailureClass, FileTokenStore, MemoryTokenStore};

use crate::support::{Harness, auth_error, client_with, eventually, get_through};

const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

/// The outcome of a request, with an error as the `AuthError`'s text: comparable and readable.
fn outcome(result: Result<u16, reqwest_middleware::Error>) -> Result<u16, String> {
    result.map_err(|err| auth_error(&err).to_string())
}

// 1. A refresh token that IQM may have acted on counts as spent: the next step is a login.

#[tokio::test]
async fn a_refresh_whose_answer_is_lost_after_iqm_rotated_is_followed_by_a_login() {
    let h = Harness::with(|b| b.auth_timeout(Duration::from_millis(200))).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // IQM rotates the refresh token, then holds its answer past the layer's auth timeout.
    h.iqm.hold_refresh_answers(Duration::from_millis(500));
    h.auth.renew().await.unwrap();
    h.iqm.hold_refresh_answers(Duration::ZERO);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(
        h.iqm.refresh_reuses(),
        0,
        "a spent refresh token was presented"
    );
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

#[tokio::test]
async fn a_refresh_whose_answer_is_cut_off_or_unreadable_is_followed_by_a_login() {
    for answer in [Answer::ResetMidBody, Answer::TruncatedJson] {
        let h = Harness::start().await;
        assert_eq!(h.get("/x").await.unwrap(), 200);

        // The fake rotates the refresh token before it answers so.
        h.iqm.queue_refresh_answers([answer.clone()]);
        h.auth.renew().await.unwrap();
        assert_eq!(h.get("/x").await.unwrap(), 200);

        assert_eq!(h.iqm.refresh_reuses(), 0, "{answer:?}");
        assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1), "{answer:?}");
    }
}

#[tokio::test]
async fn a_refresh_cut_off_by_the_acquire_timeout_is_followed_by_a_login() {
    let h = Harness::with(|b| b.acquire_timeout(Duration::from_millis(300))).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // IQM rotates, and the acquisition gives up before the answer comes.
    h.iqm.hold_refresh_answers(SECOND);
    let cut_off = h.auth.renew().await;
    assert!(
        matches!(cut_off, Err(AuthError::BudgetExhausted(_))),
        "{cut_off:?}"
    );
    h.iqm.hold_refresh_answers(Duration::ZERO);

    // The next renewal (here for a revocation) must not present the refresh token again.
    h.iqm.revoke_all_access_tokens();
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(
        h.iqm.refresh_reuses(),
        0,
        "a spent refresh token was presented"
    );
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

// 2. A 401-driven renewal treats the token as expired: one refresh try, then a login.

#[tokio::test]
async fn a_revoked_token_with_a_failing_refresh_endpoint_is_recovered_by_one_login() {
    let h = Harness::start().await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::Status(502));
    h.iqm.revoke_all_access_tokens();

    assert_eq!(outcome(h.get("/x").await), Ok(200));

    assert_eq!(
        (h.iqm.logins(), h.iqm.refreshes()),
        (2, 1),
        "one failed refresh, then one login"
    );
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
    }
    assert_eq!(h.iqm.auth_calls(), 3);
}

// 3. Refresh down, login up: the login fallback is never refused at expiry.

/// Real time (9 s): the failed refresh calls' backoff runs on tokio's timer, so a manual clock
/// would let the token expire in the middle of a renewal at a point the test does not control.
#[tokio::test]
async fn with_the_refresh_endpoint_down_and_login_up_no_request_fails_at_expiry() {
    let h = Harness::start().await;
    h.iqm.set_token_lifetime(Duration::from_secs(4));
    h.iqm.set_refresh_answer(Answer::Status(500));

    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = Vec::new();
    for _ in 0..45 {
        tick.tick().await;
        let result = outcome(h.get("/x").await);
        if result != Ok(200) {
            failed.push((started.elapsed().as_millis(), result));
        }
    }

    assert!(
        failed.is_empty(),
        "failed requests (ms, outcome): {failed:?}"
    );
    assert_eq!(h.iqm.unauthorized(), 0);
    assert_eq!(h.iqm.refresh_reuses(), 0);
}

// 4. A request made after `logout()` returned starts a renewal of its own.

#[tokio::test]
async fn a_request_made_after_logout_returned_logs_in_again() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_delay(SECOND);

    // A proactive refresh is in flight when the logout comes.
    clock.advance(HOUR - Duration::from_secs(30));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    eventually("the proactive refresh reached IQM", || {
        h.iqm.refreshes() == 1
    })
    .await;
    h.auth.logout().await.unwrap();

    assert_eq!(outcome(h.get("/x").await), Ok(200));
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

// 5. 401s that are not the token's fault, under mixed traffic.

/// Sits below the layer and has the fake answer 401 to every request for `path`, the original
/// and any replay, whatever its token: an endpoint that refuses the user. (The fake answers
/// queued statuses first come, first served; queuing one right before each such request, from
/// inside the stack, is what keeps a replay from taking another request's answer.)
struct RefusingEndpoint {
    iqm: Arc<FakeIqm>,
    path: &'static str,
}

#[async_trait::async_trait]
impl Middleware for RefusingEndpoint {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if request.url().path() == self.path {
            self.iqm.queue_api_answers([401]);
        }
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn an_endpoint_that_always_answers_401_costs_at_most_two_renewals_under_mixed_traffic() {
    let clock = Arc::new(ManualClock::new());
    let iqm = Arc::new(FakeIqm::start_with_clock(clock.clone()).await.unwrap());
    let auth = iqm
        .auth_builder()
        .background_renewal(false)
        .build()
        .unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .with(RefusingEndpoint {
            iqm: Arc::clone(&iqm),
            path: "/forbidden",
        })
        .build();
    let get = |path: &'static str| {
        let request = client.get(iqm.url(path)).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    let renewals = || iqm.logins() + iqm.refreshes() - 1;
    assert_eq!(get("/x").await, 200);

    // 20 s of 4 requests a second to the refusing endpoint, 4 a second to others, interleaved;
    // half-way through, IQM revokes the token.
    let mut unexpected = Vec::new();
    let mut revocation = None;
    for tick in 0..160 {
        if tick == 81 {
            let before = renewals();
            iqm.revoke_all_access_tokens();
            let status = get("/x").await;
            revocation = Some((status, renewals() - before));
        } else {
            let (path, expected) = if tick % 2 == 0 {
                ("/forbidden", 401)
            } else {
                ("/x", 200)
            };
            let status = get(path).await;
            if status != expected {
                unexpected.push((tick, path, status));
            }
        }
        clock.advance(Duration::from_millis(125));
    }

    let (revocation_status, revocation_renewals) = revocation.unwrap();
    // The first 401 renews and its replay proves the refusal: 10 s of no renewal; then one
    // renewal proves it again, for 20 s. The bound is 2.
    assert_eq!(
        renewals() - revocation_renewals,
        2,
        "renewals for the refusing endpoint in 20 s"
    );
    assert_eq!(
        (revocation_status, revocation_renewals),
        (200, 1),
        "the revocation is recovered at once: one renewal, and the replay answered 200"
    );
    assert!(
        unexpected.is_empty(),
        "(tick, path, status): {unexpected:?}"
    );
    assert_eq!(iqm.refresh_reuses(), 0);
}

// 6. Hung calls are charged to the failed-call budget.

/// Real time (70 s): the hangs are cut by reqwest's timeout and the acquisition's, which a
/// manual clock does not move, and the window asserted on is a minute of the fake's arrivals.
///
/// The acquisition gives up at 5 s, during the third 2-s try of each renewal: that hung call
/// arrived at IQM like the others and must be charged like them. (With the default 15 s all
/// three tries time out within the acquisition, and each is charged when it does.)
#[tokio::test]
async fn logins_that_hang_past_their_timeout_stay_within_ten_calls_a_minute() {
    let h = Harness::with(|b| {
        b.auth_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(5))
    })
    .await;
    h.iqm.set_login_delay(Duration::from_secs(24 * 3600));

    // A request every 250 ms for 70 s; the login calls that arrived, sampled at each request.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut arrived = Vec::new();
    let mut requests = Vec::new();
    for _ in 0..280 {
        tick.tick().await;
        arrived.push(h.iqm.logins());
        requests.push(tokio::spawn(h.client.get(h.iqm.url("/x")).send()));
    }
    tick.tick().await;
    arrived.push(h.iqm.logins());

    // 240 ticks of 250 ms: every 60-s window of samples.
    let busiest_minute = arrived
        .windows(241)
        .map(|window| window[240] - window[0])
        .max();
    assert!(
        busiest_minute.is_some_and(|calls| calls <= 10),
        "login calls in the busiest minute: {busiest_minute:?}; all: {}",
        h.iqm.logins()
    );
    for request in requests {
        request.abort();
    }
}

// 7. The rejection cool-down never wraps.

#[tokio::test]
async fn a_wrong_password_for_ten_hours_costs_four_logins_an_hour_after_the_first() {
    let (h, clock) =
        Harness::with_manual_clock_and(|b| b.credentials(EMAIL, "wrong password")).await;

    // A request every 10 s for 10 hours; the logins of each hour.
    let mut first_other_failure = None;
    let mut per_hour = Vec::new();
    let mut before = 0;
    for hour in 0..10 {
        for request in 0..360 {
            let err = h.get("/x").await.unwrap_err();
            let err = auth_error(&err);
            if err.class() != FailureClass::Rejected && first_other_failure.is_none() {
                first_other_failure = Some((hour * 3600 + request * 10, err.to_string()));
            }
            clock.advance(Duration::from_secs(10));
        }
        per_hour.push(h.iqm.logins() - before);
        before = h.iqm.logins();
    }

    // 30 s doubling to 15 min: 8 logins in the first hour, then one every 15 min.
    assert_eq!(per_hour, [8, 4, 4, 4, 4, 4, 4, 4, 4, 4]);
    assert_eq!(
        first_other_failure, None,
        "(second, error) of the first failure that is not the refusal"
    );
    assert_eq!(h.iqm.api_calls(), 0);
}

// 8. A refusal inside a 200 is cooled down like a 4xx refusal.

#[tokio::test]
async fn a_login_refused_inside_a_200_for_an_hour_costs_eight_logins() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_login_answer(Answer::ErrorEnvelope);

    // A request every 10 s for an hour.
    for _ in 0..360 {
        let err = h.get("/x").await.unwrap_err();
        assert_eq!(auth_error(&err).class(), FailureClass::Rejected);
        clock.advance(Duration::from_secs(10));
    }

    // As for a 403: logins at 0, 30, 90, 210, 450, 930, 1830, 2730 s.
    assert_eq!(h.iqm.logins(), 8);
    assert_eq!(h.iqm.api_calls(), 0);
}

// 9. A 429 on a refresh after expiry is waited out, not answered with a login.

#[tokio::test]
async fn a_429_on_a_refresh_after_expiry_pauses_renewals_instead_of_logging_in() {
    let (h, clock) = Harness::with_manual_clock(false).await;
    h.iqm.set_token_lifetime(Duration::from_secs(3));
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_answer(Answer::StatusRetryAfter(429, 30));
    clock.advance(Duration::from_secs(3));

    // The next 5 s, a request every 200 ms.
    let mut outcomes = Vec::new();
    for _ in 0..25 {
        outcomes.push(h.get("/x").await.map_err(|err| {
            let err = auth_error(&err);
            (err.to_string(), err.retry_after())
        }));
        clock.advance(Duration::from_millis(200));
    }

    assert_eq!(
        (h.iqm.logins() - 1, h.iqm.refreshes()),
        (0, 1),
        "outcomes: {outcomes:?}"
    );
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err((_, Some(wait))) if !wait.is_zero() && *wait <= Duration::from_secs(30)),
            "{outcome:?}"
        );
    }
}

// 10. Only a 401 from IQM's origin speaks about IQM's token.

#[tokio::test]
async fn a_401_from_another_origin_after_a_redirect_renews_nothing() {
    // No `redirect_policy()`: reqwest follows IQM's redirect to a third party.
    let h = Harness::start().await;
    let elsewhere = FakeIqm::start().await.unwrap();
    h.iqm.redirect("/elsewhere", &elsewhere.url("/landing"));

    // Each redirected request after one that IQM served.
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.unwrap(), 200);
        assert_eq!(h.get("/elsewhere").await.unwrap(), 401);
    }

    let stats = h.auth.stats();
    assert_eq!(
        (h.iqm.logins(), h.iqm.refreshes()),
        (1, 0),
        "renewals for the third party's 401s"
    );
    assert_eq!(
        (stats.renewals_unauthorized, stats.unauthorized_replays),
        (0, 0)
    );
    assert_eq!(elsewhere.unauthorized(), 5);
}

// 11. A stored session of another account is not resumed.

#[tokio::test]
async fn a_stored_session_of_another_account_is_not_resumed() {
    let (a, b) = (
        FakeIqm::start().await.unwrap(),
        FakeIqm::start().await.unwrap(),
    );
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("session.json");
    let on_file = |iqm: &FakeIqm| {
        iqm.auth_builder()
            .token_store(Arc::new(FileTokenStore::new(&path)))
            .build()
            .unwrap()
    };
    let layer_a = on_file(&a);
    assert_eq!(get_through(&a, &layer_a).await, 200);
    drop(layer_a);

    let layer_b = on_file(&b);
    for _ in 0..3 {
        assert_eq!(get_through(&b, &layer_b).await, 200);
    }

    assert_eq!(b.unauthorized(), 0, "B was sent A's token");
    let seen = b.seen_requests();
    assert!(seen.iter().all(|request| request.valid_bearer), "{seen:?}");
    assert_eq!(
        (b.logins(), b.refreshes()),
        (1, 0),
        "B logs in once, and never presents A's refresh token"
    );
    assert_eq!(a.auth_calls(), 1);
    assert_eq!(layer_b.stats().foreign_sessions_ignored, 1);
}

// 12. Two live layers sharing one store never present a spent refresh token.

#[tokio::test]
async fn two_live_layers_sharing_one_store_never_present_a_spent_refresh_token() {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    iqm.set_token_lifetime(Duration::from_secs(2));
    let store = Arc::new(MemoryTokenStore::default());
    let layer = || {
        iqm.auth_builder()
            .token_store(store.clone())
            .background_renewal(false)
            .build()
            .unwrap()
    };
    let (first, second) = (layer(), layer());
    let (first_client, second_client) = (client_with(&first), client_with(&second));
    let get = |client: &reqwest_middleware::ClientWithMiddleware| {
        let request = client.get(iqm.url("/x")).send();
        async move {
            request
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    };
    // The second layer starts once the first has stored its session, and resumes it.
    assert_eq!(get(&first_client).await, Ok(200));

    // A request through each every 200 ms for 10 s.
    let mut failed = Vec::new();
    for tick in 0..50 {
        let (a, b) = tokio::join!(get(&first_client), get(&second_client));
        for (layer, result) in [("first", a), ("second", b)] {
            if result != Ok(200) {
                failed.push((tick, layer, result));
            }
        }
        clock.advance(Duration::from_millis(200));
    }

    assert_eq!(iqm.refresh_reuses(), 0, "spent refresh tokens presented");
    assert!(failed.is_empty(), "(tick, layer, outcome): {failed:?}");
    // One login between them, and one refresh per token life (1.5 s of every 2 s), not two.
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 6));
}

// Limits to remove: with replay off, a 401 is handed back at once.

#[tokio::test]
async fn with_replay_off_a_401_is_handed_back_before_its_renewal_finishes() {
    let (h, announced) = Harness::counting_new_tokens(|b| b.replay_unauthorized(false)).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    h.iqm.set_refresh_delay(Duration::from_secs(2));
    h.iqm.revoke_all_access_tokens();

    assert_eq!(h.get("/x").await.unwrap(), 401);
    assert_eq!(
        announced.load(Ordering::SeqCst),
        1,
        "the 401 waited for its renewal to finish"
    );

    eventually("the renewal reached IQM", || h.iqm.refreshes() == 1).await;
    eventually("the renewal finished", || {
        announced.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(h.get("/x").await.unwrap(), 200);
    assert_eq!(
        (h.iqm.logins(), h.iqm.refreshes(), h.iqm.unauthorized()),
        (1, 1, 1)
    );
}
