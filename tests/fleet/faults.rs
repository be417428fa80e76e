//! The fleet when Redis and IQM misbehave (issue 15): Redis rolled back to an older snapshot,
//! down while a holder with a token store restarts, stalled during a storm; IQM failing for
//! a minute and a half; a replica whose wall clock is ahead.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iqm_auth::testing::Answer;

use super::redis_server::{RedisServer, free_port};
use super::replica::{Replica, ReplicaConfig, Report, libfaketime};
use super::{fake, finish_all, go_all, runtime, setup, spawn_all, wait_all};

/// Issue 15, item 2 (Redis loses recent writes): the session is `DUMP`ed, the fleet refreshes
/// (rotating the refresh token), and the old dump is `RESTORE`d in place of everything, as a
/// restart from an older RDB file or a failover to a lagging replica does. The restored set's
/// refresh token is spent and carries no "refreshing" mark: it must never be presented again.
/// One replica logs in for the fleet instead, and every request is answered 200.
///
/// The refresh is made by one replica, which then stops, and the 3 others take its set: after
/// the rollback none of them has presented the restored refresh token itself, each has seen the
/// newer generation. They send their requests in two rounds, so that a replica that took the
/// restored set sends again after its token was refused.
#[test]
fn redis_rolled_back_to_an_older_snapshot_presents_no_spent_refresh_token() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let refresher = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:1");
    let mut refresher = Replica::spawn(&refresher);
    let others = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:1,wait,get:2,get:2");
    let mut others = spawn_all(vec![others; 3]);
    refresher.wait_until_waiting();
    wait_all(&others);
    assert_eq!(iqm.logins(), 1);
    let snapshot = redis.snapshot();

    iqm.revoke_all_access_tokens();
    refresher.go();
    let refresher = refresher.finish();
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1), "{refresher:?}");
    go_all(&mut others);
    wait_all(&others);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1), "the others adopt");

    redis.roll_back_to(&snapshot);
    iqm.revoke_all_access_tokens();
    go_all(&mut others);
    let reports = finish_all(others);

    // (the others' requests 200 and failed, spent refresh tokens presented, logins, refreshes)
    assert_eq!(
        (
            sum(&reports, |r| r.ok),
            sum(&reports, |r| r.failed),
            iqm.refresh_reuses(),
            iqm.logins(),
            iqm.refreshes()
        ),
        (18, 0, 0, 2, 1),
        "one login for the fleet after the rollback, no spent token presented: {reports:?}"
    );
}

fn sum(reports: &[Report], field: impl Fn(&Report) -> u64) -> u64 {
    reports.iter().map(field).sum()
}

/// Issue 15, item 4 (a token store and a fleet together): the holder, with a file token
/// store, logs in for the fleet, publishes the set and saves it to its store. Redis goes down
/// (its data kept on disk), IQM revokes the access tokens, and the holder restarts with the
/// same store: the stored set is the fleet's, so the restarted holder must not refresh it on
/// its own; it logs in instead. Redis comes back with the set, and replicas that start then
/// refresh it: no spent refresh token is presented.
#[test]
fn a_holder_restarted_with_its_token_store_while_redis_is_down_never_refreshes_the_fleets_set() {
    let dir = tempfile::tempdir().expect("a folder");
    let port = free_port();
    let Some(mut redis) = RedisServer::start_persistent(port, dir.path()) else {
        return;
    };
    let rt = runtime();
    let iqm = fake(&rt);
    let mut holder = ReplicaConfig::new(&iqm, &redis.url(), "get:1");
    holder.token_store = Some(dir.path().join("iqm-session.json"));
    holder.lease_ttl_ms = Some(2000);
    let first = Replica::spawn(&holder).finish();
    assert_eq!((first.ok, first.logins), (1, 1), "{first:?}");

    redis.save();
    redis.stop();
    iqm.revoke_all_access_tokens();
    let restarted = Replica::spawn(&holder.steps("get:2")).finish();
    let _back = RedisServer::start_persistent(port, dir.path()).expect("redis-server again");
    let mut fleet = holder.steps("get:2");
    fleet.token_store = None;
    let reports = finish_all(spawn_all(vec![fleet; 2]));

    // (the restarted holder's requests 200, its logins and refreshes; the fleet's requests
    // 200; spent refresh tokens presented; logins and refreshes at IQM)
    assert_eq!(
        (
            restarted.ok,
            restarted.logins,
            restarted.refreshes,
            sum(&reports, |r| r.ok),
            iqm.refresh_reuses(),
            iqm.logins(),
            iqm.refreshes()
        ),
        (2, 1, 0, 4, 0, 2, 1),
        "the restarted holder logs in, it does not refresh the fleet's set: {restarted:?} {reports:?}"
    );
}

/// Issue 15, item 5 (a Redis blip makes replicas log in on their own): 10 replicas, their
/// tokens revoked, and Redis stalled 0.8 s (`DEBUG SLEEP 0.8`, longer than the 500-ms
/// command timeout) at the start of the storm, 5 requests each. Waiters keep waiting through
/// the errors: at most 2 renewals fleet-wide, and 50 of 50 requests answered 200.
#[test]
fn a_redis_stall_at_the_start_of_a_401_storm_costs_at_most_two_renewals() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:5");
    let mut replicas = spawn_all(vec![config; 10]);
    wait_all(&replicas);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));

    iqm.revoke_all_access_tokens();
    let stall = redis.stall(0.8);
    go_all(&mut replicas);
    let reports = finish_all(replicas);
    stall.join().expect("the stall ends");

    // The storm's requests (after one each to log in), and the renewals after the login.
    let storm_ok = sum(&reports, |r| r.ok) - 10;
    let renewals = iqm.logins() - 1 + iqm.refreshes();
    assert!(
        storm_ok == 50 && renewals <= 2 && iqm.refresh_reuses() == 0,
        "{storm_ok} of 50 requests 200; {renewals} renewals ({} logins, {} refreshes after the \
         first login, {} spent refresh tokens presented): {reports:?}",
        iqm.logins() - 1,
        iqm.refreshes(),
        iqm.refresh_reuses()
    );
}

/// The most of `times` (sorted) within any window of `window`.
fn most_within(times: &[Instant], window: Duration) -> usize {
    times
        .iter()
        .enumerate()
        .map(|(i, start)| {
            times[i..]
                .iter()
                .take_while(|t| **t - *start < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Issue 15, item 6 (an outage across the fleet spends IQM's limit): 5 replicas with a token,
/// then the tokens revoked and IQM's login and refresh answering 503 for 90 s while each
/// replica sends a request every 250 ms. The fleet keeps its failures in a row in the shared
/// session and paces as one process does (its budget: 10 failed calls a minute): at most 10
/// failed auth calls reach IQM in any 60-s window, fleet-wide.
#[test]
fn an_iqm_outage_of_ninety_seconds_costs_the_fleet_ten_failed_calls_a_minute() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,pace:250:90000");
    let mut replicas = spawn_all(vec![config; 5]);
    wait_all(&replicas);
    assert_eq!(iqm.failed_auth_calls(), 0);

    iqm.set_login_answer(Answer::Status(503));
    iqm.set_refresh_answer(Answer::Status(503));
    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    let times = iqm.failed_auth_call_times();
    let most = most_within(&times, Duration::from_secs(60));
    assert!(
        !times.is_empty() && most <= 10 && sum(&reports, |r| r.ok) == 5,
        "{most} failed auth calls in one minute ({} in all: {} logins, {} refreshes): {reports:?}",
        times.len(),
        iqm.logins(),
        iqm.refreshes()
    );
}

/// Issue 15, item 7 (clock skew): 4 replicas, one of them with its wall clock 5 minutes ahead
/// (libfaketime; monotonic time untouched), 20-s tokens, requests every 100 ms for 50 s. The
/// remaining lifetime is shared against Redis's clock, so the skewed replica stamps no
/// deadline 5 minutes too late: the other 3 are never answered 401, and the fleet renews at
/// most 4 times (the login included: about one renewal per 15 s).
#[test]
fn a_replica_whose_wall_clock_is_five_minutes_ahead_makes_no_other_replica_send_an_expired_token() {
    if libfaketime().is_none() {
        return;
    }
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.set_token_lifetime(Duration::from_secs(20));
    let config = ReplicaConfig::new(&iqm, &redis.url(), "pace:100:50000");
    let mut ahead = config.clone();
    ahead.wall_clock_offset = Some("+5m".to_owned());
    let reports = finish_all(spawn_all([ahead, config.clone(), config.clone(), config]));

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let skew_s = reports[0].wall_ms.saturating_sub(now_ms) / 1000;
    assert!(
        (290..=300).contains(&skew_s),
        "libfaketime in effect: {skew_s} s ahead"
    );
    let others_failed = sum(&reports[1..], |r| r.failed);
    let others_unauthorized = sum(&reports[1..], |r| r.unauthorized);
    let renewals = iqm.logins() + iqm.refreshes();
    assert!(
        others_failed == 0
            && others_unauthorized == 0
            && renewals <= 4
            && iqm.refresh_reuses() == 0,
        "the other 3: {others_failed} requests failed, {others_unauthorized} answered 401; \
         {renewals} renewals ({} logins, {} refreshes, {} spent refresh tokens presented): \
         {reports:?}",
        iqm.logins(),
        iqm.refreshes(),
        iqm.refresh_reuses()
    );
}
