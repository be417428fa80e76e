//! IQM's rate limit across a fleet (issue 16): replicas as processes pacing their requests in
//! one line in Redis, and one replica's 429 closing the window for all.
//!
//! IQM's minute is scaled down to keep the tests short: the fleet paces 20 requests per 3 s,
//! and the fake IQM allows 20 per 2.7 s. IQM counts requests as they arrive and the fleet as
//! they leave: a tenth of the period covers the delays of five processes on two cores between
//! a turn and the arrival (the README advises a rate a little under IQM's for the same reason).

use std::time::Duration;

use iqm_auth::{Pace, RedisSession, SessionCoordinator, Turn};

use super::redis_server::{RedisServer, free_port};
use super::replica::{ReplicaConfig, Report};
use super::{fake, finish_all, go_all, runtime, setup, spawn_all, wait_all};

const PERIOD_MS: u64 = 3000;
const IQM_WINDOW: Duration = Duration::from_millis(2700);

fn paced(config: ReplicaConfig) -> ReplicaConfig {
    ReplicaConfig {
        request_rate: Some((20, PERIOD_MS)),
        rate_limit_wait_ms: Some(30_000),
        ..config
    }
}

fn sum(reports: &[Report], field: fn(&Report) -> u64) -> u64 {
    reports.iter().map(field).sum()
}

/// Issue 16, tests, fourth bullet: 5 replica processes sharing one Redis, paced 20 a (scaled)
/// minute fleet-wide, 20 requests each at once: no 429 at the fake, at most 20 calls fleet-wide
/// in any of IQM's windows, every request served.
#[test]
fn five_replicas_paced_fleet_wide_stay_inside_iqms_limit() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.set_rate_limit(Some(20));
    iqm.set_rate_limit_window(IQM_WINDOW);
    let config = paced(ReplicaConfig::new(&iqm, &redis.url(), "get:20"));
    let reports = finish_all(spawn_all(vec![config; 5]));

    for report in &reports {
        assert_eq!(
            (report.ok, report.failed, report.refused),
            (20, 0, 0),
            "{report:?}"
        );
    }
    let statuses: Vec<u16> = iqm.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses.len(), 101, "a login and 100 requests");
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(iqm.rate_limited(), 0);
    let most = iqm.most_calls_within(IQM_WINDOW);
    assert!(most <= 20, "{most} calls in one of IQM's windows");
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));
}

/// Issue 16, tests, fourth bullet: one replica's 429 closes the window for all 5; the others
/// send nothing until it opens, then every request is served.
#[test]
fn one_replicas_429_closes_the_window_for_the_whole_fleet() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let config = paced(ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:10"));
    let mut replicas = spawn_all(vec![config; 5]);
    wait_all(&replicas);
    iqm.queue_api_rate_limit(Some(2));
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    let calls = iqm.calls();
    let limited: Vec<_> = calls.iter().filter(|call| call.status == 429).collect();
    assert_eq!(limited.len(), 1, "{calls:?}");
    let closed_at = limited[0].at;
    let in_window: Vec<_> = calls
        .iter()
        .filter(|call| call.at > closed_at && call.at < closed_at + Duration::from_secs(2))
        .collect();
    assert!(in_window.is_empty(), "sent into the window: {in_window:?}");
    assert_eq!(
        (sum(&reports, |r| r.ok), sum(&reports, |r| r.failed)),
        (54, 1),
        "the 429 goes back to its caller, every other request is served: {reports:?}"
    );
    assert_eq!(sum(&reports, |r| r.rate_limited), 1, "{reports:?}");
    assert_eq!(calls.len(), 56, "a login and 55 requests");
}

/// Issue 16, item 4: with Redis out of reach each replica paces alone, at its share of the
/// rate (the fleet's rate over the replicas last seen, at least 4: 5 per 3 s here), and says
/// so once; the fleet stays inside IQM's limit.
#[test]
fn with_redis_out_of_reach_each_replica_paces_alone_at_its_share() {
    let rt = runtime();
    let iqm = fake(&rt);
    iqm.set_rate_limit(Some(20));
    iqm.set_rate_limit_window(IQM_WINDOW);
    let nowhere = format!("redis://127.0.0.1:{}/0", free_port());
    let config = paced(ReplicaConfig::new(&iqm, &nowhere, "get:10"));
    let reports = finish_all(spawn_all(vec![config; 2]));

    for report in &reports {
        assert_eq!((report.ok, report.failed), (10, 0), "{report:?}");
        assert_eq!(report.pacing_alone_warnings, 1, "{report:?}");
    }
    assert_eq!(iqm.rate_limited(), 0);
    // Each replica: its login and 10 requests at 5 per 3 s, so no more than 5 of its calls in
    // any 2.7 s; the two together at most 10.
    assert!(
        iqm.most_calls_within(IQM_WINDOW) <= 10,
        "{}",
        iqm.most_calls_within(IQM_WINDOW)
    );
}

/// The fleet's line as the Lua scripts keep it in a real Redis, called directly, with an
/// interval of 1000 s (so the milliseconds between the calls do not show in whole seconds):
/// API turns one interval apart, refused past their wait; an auth call's turn within one
/// interval, the waiting API turns moved back; a cancelled turn the next request's; a turn a
/// window closed over moved past its end.
#[test]
fn in_redis_an_auth_call_goes_first_and_the_waiting_move_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let shared = RedisSession::builder(redis.url()).build().unwrap();
    let interval = Duration::from_secs(1000);
    let api = |max_wait: u64| Pace::new(interval, Duration::from_secs(max_wait), false);
    let auth = Pace::new(interval, Duration::from_secs(10_000), true);
    let shown = |turn: Turn| match turn {
        Turn::Now => "now".to_owned(),
        Turn::In(wait) => format!("in {}", wait.as_secs_f64().round()),
        Turn::Refused(wait) => format!("refused {}", wait.as_secs_f64().round()),
        other => format!("{other:?}"),
    };
    rt.block_on(async {
        let take = |call: &'static str, pace: Pace| {
            let shared = &shared;
            async move {
                shown(
                    shared
                        .take_turn("line", call, &pace)
                        .await
                        .unwrap()
                        .unwrap(),
                )
            }
        };
        let confirm = |call: &'static str, pace: Pace| {
            let shared = &shared;
            async move { shown(shared.confirm_turn("line", call, &pace).await.unwrap()) }
        };
        assert_eq!(take("a", api(10_000)).await, "now");
        assert_eq!(take("b", api(10_000)).await, "in 1000");
        assert_eq!(take("c", api(10_000)).await, "in 2000");
        assert_eq!(take("d", api(2500)).await, "refused 3000");
        assert_eq!(take("renewal", auth).await, "in 1000");
        assert_eq!(confirm("b", api(10_000)).await, "in 2000");
        assert_eq!(confirm("c", api(10_000)).await, "in 3000");
        shared.cancel_turn("line", "b", &api(10_000)).await.unwrap();
        assert_eq!(take("e", api(10_000)).await, "in 2000");
        shared
            .close_window("line", Duration::from_secs(5000))
            .await
            .unwrap();
        assert_eq!(take("f", api(10_000)).await, "in 5000");
        assert_eq!(confirm("c", api(10_000)).await, "in 6000");
    });
}
