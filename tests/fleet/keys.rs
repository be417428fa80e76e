//! Encryption keys across the fleet (issue 15, item 8): a replica that cannot open the
//! fleet's sealed set (no key, another key) renews for itself and never writes over it; and
//! the scripts tolerate something other than a hash under the session key.

use super::redis_server::RedisServer;
use super::replica::{Replica, ReplicaConfig, Report};
use super::{finish_all, go_all, setup, spawn_all, wait_all};

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

/// A fleet of 3 replicas sealing with K1 logs in; a replica with `keys` joins and sends 2
/// requests; then the fleet's tokens are revoked and it sends 2 requests each. Asserts that
/// the shared sets in Redis are exactly as the fleet left them after the joiner ran, that the
/// joiner logged in once for itself, and that the fleet then renews its own set with one
/// refresh (no second login). Returns the joiner's report.
fn a_replica_joins_a_sealed_fleet(keys: Vec<[u8; 32]>) -> Option<Report> {
    let (redis, _rt, iqm) = setup()?;
    let mut sealed = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:2");
    sealed.keys = vec![K1];
    let mut fleet = spawn_all(vec![sealed.clone(); 3]);
    wait_all(&fleet);
    assert_eq!(iqm.logins(), 1);
    let before = redis.hashes();
    assert_eq!(before.len(), 1, "one shared session");

    let mut joining = sealed.steps("get:2");
    joining.keys = keys;
    let joined = Replica::spawn(&joining).finish();
    let after = redis.hashes();

    iqm.revoke_all_access_tokens();
    go_all(&mut fleet);
    let reports = finish_all(fleet);
    let sum = |field: fn(&Report) -> u64| reports.iter().map(field).sum::<u64>();
    // (the sealed set left as it was; the joiner's requests 200 and logins; the fleet's
    // requests 200 and unreadable sets; logins, refreshes and spent refresh tokens at IQM)
    assert_eq!(
        (
            after == before,
            joined.ok,
            joined.logins,
            sum(|r| r.ok),
            sum(|r| r.unreadable),
            iqm.logins(),
            iqm.refreshes(),
            iqm.refresh_reuses()
        ),
        (true, 2, 1, 9, 0, 2, 1, 0),
        "the joiner logs in for itself and leaves the sealed set alone, and the fleet renews its \
         own set: {joined:?} {reports:?}\nbefore {}\nafter {}",
        shown(&before),
        shown(&after)
    );
    Some(joined)
}

/// The shared sessions as text, bytes escaped.
fn shown(hashes: &super::redis_server::Hashes) -> String {
    let text = |bytes: &[u8]| bytes.escape_ascii().to_string();
    hashes
        .iter()
        .map(|(key, fields)| {
            let fields: Vec<String> = fields
                .iter()
                .map(|(name, value)| format!("{}={}", text(name), text(value)))
                .collect();
            format!("{} {{{}}}", text(key), fields.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Issue 15, item 8 (keys): a replica without the key joins a fleet whose sets are sealed. It
/// cannot read the set and logs in for itself, but never writes its set in clear over the
/// sealed one.
#[test]
fn a_keyless_replica_never_writes_over_the_fleets_sealed_set() {
    a_replica_joins_a_sealed_fleet(Vec::new());
}

/// Issue 15, item 8 (keys): a replica with another key joins a fleet sealing with K1. It
/// renews for itself, warned and counted (`Stats::shared_unreadable`), and never writes over
/// the sealed set.
#[test]
fn a_replica_with_another_key_renews_for_itself_warned_and_counted_and_never_overwrites() {
    let Some(joined) = a_replica_joins_a_sealed_fleet(vec![K2]) else {
        return;
    };
    assert!(
        joined.unreadable == 1 && joined.warnings >= 1,
        "warned and counted: {joined:?}"
    );
}

/// Issue 15, item 8 (`MARK_REFRESHING` must tolerate a non-hash value as `PAUSE` does): a
/// replica that logged in on its own while Redis was down finds a string under the session
/// key when Redis is back. Its renewal takes the lease and marks the set it renews from as
/// refreshing: the script must not fail on the string (a Redis error, and the replica renewing
/// on its own again), and the renewed set replaces it.
#[test]
fn marking_a_refresh_replaces_a_string_under_the_session_key() {
    let Some((mut redis, _rt, iqm)) = setup() else {
        return;
    };
    let port = redis.port;
    let mut config = ReplicaConfig::new(&iqm, &redis.url(), "get:1");
    config.namespace = Some("mark-garbage".to_owned());
    config.lease_ttl_ms = Some(1000);
    Replica::spawn(&config).finish();
    let hashes = redis.hashes();
    let session_key = hashes.keys().next().expect("the shared session").clone();
    redis.stop();

    let mut own = Replica::spawn(&config.steps("get:1,wait,get:1"));
    own.wait_until_waiting();
    let redis = RedisServer::start_with(port, None).expect("redis-server again");
    redis.command(&[b"SET", &session_key, b"not-a-token-set"]);
    iqm.revoke_all_access_tokens();
    own.go();
    let report = own.finish();

    // (requests 200, what is under the key, logins, refreshes and spent refresh tokens at IQM)
    assert_eq!(
        (
            report.ok,
            redis.kind(&session_key),
            iqm.logins(),
            iqm.refreshes(),
            iqm.refresh_reuses()
        ),
        (2, "hash".to_owned(), 2, 1, 0),
        "the string under the key is replaced by the renewed set: {report:?}"
    );
}
