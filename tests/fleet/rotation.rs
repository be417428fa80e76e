//! Key rotation (issue 15, item 8): `RedisSessionBuilder::encryption_keys([new, old])` seals
//! with the first key and opens with any, so a rolling restart onto a new key costs no login.

use std::collections::VecDeque;

use super::replica::{Replica, ReplicaConfig, Report};
use super::{finish_all, go_all, setup, spawn_all};

const OLD: [u8; 32] = [0x11; 32];
const NEW: [u8; 32] = [0x22; 32];

/// Issue 15, item 8 (key rotation): a fleet of 3 replicas sealing with the old key, each
/// sending a request every 100 ms, is restarted replica by replica onto
/// `encryption_keys([new, old])`: each new replica opens the set sealed under the old key, so
/// the rollout costs no login. Once it is done, the tokens are revoked: the fleet refreshes
/// the set sealed under the old key and seals the new one under the new key, which a replica
/// with only the new key then takes. One login and one refresh in all.
#[test]
fn a_rolling_restart_onto_a_new_key_costs_no_extra_login() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let mut old = ReplicaConfig::new(&iqm, &redis.url(), "get:1,serve:100,get:1");
    old.keys = vec![OLD];
    let mut new = old.clone();
    new.keys = vec![NEW, OLD];
    let mut fleet: VecDeque<Replica> = spawn_all(vec![old; 3]).into();
    for replica in &fleet {
        replica.wait_until_waiting();
    }
    assert_eq!(iqm.logins(), 1);

    let mut reports = Vec::new();
    for _ in 0..3 {
        let mut stopping = fleet.pop_front().expect("a replica");
        stopping.go();
        reports.push(stopping.finish());
        let started = Replica::spawn(&new);
        started.wait_until_waiting();
        fleet.push_back(started);
    }
    let logins_in_the_rollout = iqm.logins() - 1;
    iqm.revoke_all_access_tokens();
    let mut fleet: Vec<Replica> = fleet.into();
    go_all(&mut fleet);
    reports.extend(finish_all(fleet));
    let mut only_new = new.steps("get:1");
    only_new.keys = vec![NEW];
    let joined = Replica::spawn(&only_new).finish();

    let sum = |field: fn(&Report) -> u64| reports.iter().map(field).sum::<u64>();
    // (logins during the rollout; requests failed and unreadable sets in the fleet; the
    // new-key-only replica's adoptions and logins; logins, refreshes and spent refresh tokens
    // at IQM)
    assert_eq!(
        (
            logins_in_the_rollout,
            sum(|r| r.failed),
            sum(|r| r.unreadable),
            joined.adoptions,
            joined.logins,
            iqm.logins(),
            iqm.refreshes(),
            iqm.refresh_reuses()
        ),
        (0, 0, 0, 1, 0, 1, 1, 0),
        "the rollout onto the new key costs no login: {reports:?} {joined:?}"
    );
}
