//! Rollouts (issue 15, item 11): replicas stopped and replaced one by one while the others
//! serve. A stopped replica does not log out (a logout ends the fleet's session), so a new
//! one takes the shared set.

use std::collections::VecDeque;

use super::replica::{Replica, ReplicaConfig};
use super::{go_all, setup, spawn_all};

/// Issue 15, item 11 (rollouts): a fleet of 10 replicas, each sending a request every 100 ms,
/// is restarted replica by replica: one stops (its process exits), a new one starts and
/// serves, then the next. The rolling restart costs no login beyond the fleet's first, and no
/// request fails.
#[test]
fn a_rolling_restart_of_ten_replicas_costs_no_login() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,serve:100,get:1");
    let mut fleet: VecDeque<Replica> = spawn_all(vec![config.clone(); 10]).into();
    for replica in &fleet {
        replica.wait_until_waiting();
    }
    assert_eq!(iqm.logins(), 1);

    let mut reports = Vec::new();
    for _ in 0..10 {
        let mut stopping = fleet.pop_front().expect("a replica");
        stopping.go();
        reports.push(stopping.finish());
        let started = Replica::spawn(&config);
        started.wait_until_waiting();
        fleet.push_back(started);
    }
    let mut fleet: Vec<Replica> = fleet.into();
    go_all(&mut fleet);
    reports.extend(fleet.into_iter().map(Replica::finish));

    for report in &reports {
        assert_eq!(report.failed, 0, "{report:?}");
        assert!(report.ok >= 3, "{report:?}");
    }
    assert_eq!(reports.iter().map(|r| r.logins).sum::<u64>(), 1);
    assert_eq!(reports.iter().map(|r| r.adoptions).sum::<u64>(), 19);
    assert_eq!(
        (iqm.logins(), iqm.refreshes(), iqm.unauthorized()),
        (1, 0, 0)
    );
}
