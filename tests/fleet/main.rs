//! The fleet: replicas as separate processes sharing one IQM session through a real
//! `redis-server`, against the fake IQM. Each test starts its own server on a free port.

mod accounts;
mod faults;
mod keys;
mod pacing;
mod redis_server;
mod replica;
mod rollout;
mod rotation;
mod topologies;
mod unknown;

use std::sync::Arc;
use std::time::Duration;

use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::testing::FakeIqm;
use iqm_auth::{IqmAuth, RedisSession};
use redis_server::{RedisServer, free_port};
use replica::{Replica, ReplicaConfig, Report};

/// Not a test: the body of a replica process (see `replica.rs`).
#[test]
#[ignore = "a replica process, started by the fleet tests"]
fn replica_process() {
    if replica::is_replica() {
        replica::run();
    }
}

/// A runtime for the fake IQM (and in-process layers), kept for the whole test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn fake(rt: &tokio::runtime::Runtime) -> FakeIqm {
    rt.block_on(FakeIqm::start()).expect("fake IQM")
}

/// A redis-server, a runtime and a fake IQM served on it; `None` when the test is skipped.
fn setup() -> Option<(RedisServer, tokio::runtime::Runtime, FakeIqm)> {
    let redis = RedisServer::start()?;
    let rt = runtime();
    let iqm = fake(&rt);
    Some((redis, rt, iqm))
}

fn wait_all(replicas: &[Replica]) {
    for replica in replicas {
        replica.wait_until_waiting();
    }
}

fn go_all(replicas: &mut [Replica]) {
    for replica in replicas {
        replica.go();
    }
}

fn spawn_all(configs: impl IntoIterator<Item = ReplicaConfig>) -> Vec<Replica> {
    configs.into_iter().map(|c| Replica::spawn(&c)).collect()
}

fn finish_all(replicas: Vec<Replica>) -> Vec<Report> {
    replicas.into_iter().map(Replica::finish).collect()
}

fn layer(iqm: &FakeIqm, shared: RedisSession) -> IqmAuth {
    iqm.auth_builder().shared_session(shared).build().unwrap()
}

#[test]
fn a_cold_fleet_of_twenty_processes_logs_in_once() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.set_login_delay(Duration::from_millis(200));

    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:5");
    let reports = finish_all(spawn_all(vec![config; 20]));

    assert_eq!(iqm.logins(), 1);
    assert_eq!(iqm.refreshes(), 0);
    for report in &reports {
        assert_eq!((report.ok, report.failed), (5, 0), "{report:?}");
    }
    assert_eq!(reports.iter().map(|r| r.logins).sum::<u64>(), 1);
    assert_eq!(reports.iter().map(|r| r.adoptions).sum::<u64>(), 19);
}

#[test]
fn a_joining_replica_reads_the_shared_session_and_makes_no_auth_call() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let first = Replica::spawn(&ReplicaConfig::new(&iqm, &redis.url(), "get:1"));
    assert_eq!(first.finish().ok, 1);
    let before = redis.command_calls();

    let joining = Replica::spawn(&ReplicaConfig::new(&iqm, &redis.url(), "get:3")).finish();

    assert_eq!((joining.ok, joining.logins, joining.refreshes), (3, 0, 0));
    assert_eq!(joining.adoptions, 1);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));
    // One read of the shared session: the read script is already loaded by the first replica.
    let after = redis.command_calls();
    let calls =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert_eq!(calls("evalsha"), 1, "{before:?} -> {after:?}");
    assert_eq!(
        calls("eval") + calls("script"),
        0,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn steady_state_requests_send_no_redis_command() {
    let Some((redis, rt, iqm)) = setup() else {
        return;
    };
    let auth = layer(&iqm, RedisSession::builder(redis.url()).build().unwrap());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    let url = iqm.url("/api/v3/campaigns");
    rt.block_on(client.get(&url).send()).unwrap();
    let before = redis.command_calls();

    rt.block_on(async {
        let client = Arc::new(client);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    for _ in 0..625 {
                        let status = client.get(&url).send().await.unwrap().status();
                        assert_eq!(status, 200);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });

    let mut after = redis.command_calls();
    let mut before = before;
    // The two INFO calls that read the statistics are the only commands in between.
    before.remove("info");
    after.remove("info");
    assert_eq!(before, after);
    assert_eq!(iqm.api_calls(), 10_001);
    assert_eq!(iqm.auth_calls(), 1);
}

#[test]
fn a_401_storm_across_the_fleet_costs_one_renewal() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:4");
    let mut replicas = spawn_all(vec![config; 10]);
    wait_all(&replicas);
    assert_eq!(iqm.logins(), 1);

    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    for report in &reports {
        assert_eq!((report.ok, report.failed), (5, 0), "{report:?}");
    }
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
    assert_eq!(iqm.refresh_reuses(), 0);
}

#[test]
fn the_fleet_renews_ahead_of_expiry_once_per_lifetime_not_once_per_replica() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    // 4-second tokens: each replica renews 0.5 to 1 s before expiry (its jittered margin).
    // In 5 s of traffic the fleet's token is renewed once (at 3 to 3.5 s); the next renewal
    // would fall after 6 s.
    iqm.set_token_lifetime(Duration::from_secs(4));
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,for:5000");
    let mut replicas = spawn_all(vec![config; 5]);
    wait_all(&replicas);
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    assert!(reports.iter().all(|r| r.failed == 0), "{reports:?}");
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
    assert_eq!(iqm.unauthorized(), 0);
    assert_eq!(iqm.refresh_reuses(), 0);
}

#[test]
fn a_holder_killed_during_its_login_is_taken_over_once_its_lease_expires() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.set_login_delay(Duration::from_millis(1500));
    let mut config = ReplicaConfig::new(&iqm, &redis.url(), "get:1");
    config.lease_ttl_ms = Some(2500);

    let holder = Replica::spawn(&config);
    while iqm.logins() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let others = spawn_all(vec![config; 3]);
    std::thread::sleep(Duration::from_millis(300));
    holder.kill();
    let reports = finish_all(others);

    for report in &reports {
        assert_eq!((report.ok, report.failed), (1, 0), "{report:?}");
    }
    assert_eq!(iqm.logins(), 2);
}

#[test]
fn a_replica_taking_over_from_a_holder_killed_mid_refresh_logs_in_instead_of_reusing_it() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let mut config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:1");
    config.lease_ttl_ms = Some(2000);
    let mut holder = Replica::spawn(&config);
    holder.wait_until_waiting();
    iqm.set_refresh_delay(Duration::from_millis(1500));
    iqm.revoke_all_access_tokens();

    holder.go();
    while iqm.refreshes() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    holder.kill();
    config.steps = "get:2".to_owned();
    let taker = Replica::spawn(&config).finish();

    assert_eq!((taker.ok, taker.failed), (2, 0), "{taker:?}");
    assert_eq!((taker.logins, taker.refreshes), (1, 0));
    assert_eq!(iqm.refresh_reuses(), 0);
    assert_eq!((iqm.logins(), iqm.refreshes()), (2, 1));
}

#[test]
fn redis_unreachable_from_the_start_is_not_iqm_down() {
    let rt = runtime();
    let iqm = fake(&rt);
    let nowhere = format!("redis://127.0.0.1:{}/0", free_port());
    let config = ReplicaConfig::new(&iqm, &nowhere, "get:4,get:4");
    let reports = finish_all(spawn_all(vec![config; 3]));

    for report in &reports {
        assert_eq!(
            (report.ok, report.failed, report.logins),
            (8, 0, 1),
            "{report:?}"
        );
        assert_eq!(report.renewed_alone, 1, "{report:?}");
        assert_eq!(
            report.outage_warnings, 1,
            "logged once per outage: {report:?}"
        );
    }
    assert_eq!(iqm.logins(), 3, "bounded by replicas, not requests");
}

#[test]
fn redis_stopped_mid_run_is_survived_and_the_fleet_converges_when_it_returns() {
    let Some((mut redis, _rt, iqm)) = setup() else {
        return;
    };
    let port = redis.port;
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,get:2,wait,get:2");
    let mut replicas = spawn_all(vec![config; 3]);
    wait_all(&replicas);
    assert_eq!(iqm.logins(), 1);

    // Redis goes away and IQM revokes the shared token: each replica renews on its own, by
    // logging in (the shared refresh token is not presented by several replicas at once).
    redis.stop();
    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    wait_all(&replicas);
    assert_eq!((iqm.logins(), iqm.refreshes()), (4, 0));

    // Redis comes back (empty); the next renewal brings the fleet onto one session again.
    let _back = RedisServer::start_with(port, None).expect("redis-server again");
    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    for report in &reports {
        assert_eq!((report.ok, report.failed), (5, 0), "{report:?}");
        assert_eq!(report.outage_warnings, 1, "{report:?}");
    }
    assert_eq!(
        iqm.logins() + iqm.refreshes(),
        5,
        "one renewal for the whole fleet"
    );
    assert_eq!(iqm.refresh_reuses(), 0);
}

#[test]
fn an_iqm_outage_costs_the_auth_calls_of_one_replica_not_of_the_fleet() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    // IQM asks for two minutes: whenever the replicas start (a loaded machine spreads them
    // over seconds, while the fleet's budget refills), none calls again in the test.
    iqm.set_login_answer(iqm_auth::testing::Answer::StatusRetryAfter(503, 120));
    let config = ReplicaConfig::new(&iqm, &redis.url(), "get:2");
    let reports = finish_all(spawn_all(vec![config; 10]));

    for report in &reports {
        assert_eq!((report.ok, report.failed), (0, 2), "{report:?}");
    }
    // One holder's call; the fleet then pauses for IQM's time instead of every replica trying.
    assert_eq!(iqm.logins(), 1);
}

#[test]
fn a_logout_ends_the_session_for_the_whole_fleet() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    let mut leaving = ReplicaConfig::new(&iqm, &redis.url(), "get:1,wait,logout,wait,get:1");
    leaving.namespace = Some("logout-test".to_owned());
    let mut staying = leaving.clone();
    staying.steps = "get:1,wait,wait,get:1".to_owned();
    let mut replicas = spawn_all([leaving, staying.clone(), staying.clone(), staying]);
    wait_all(&replicas);
    go_all(&mut replicas);
    wait_all(&replicas);
    assert_eq!(iqm.logouts(), 1);
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    for report in &reports {
        assert_eq!((report.ok, report.failed), (2, 0), "{report:?}");
    }
    assert_eq!(iqm.logins(), 2, "one login after the logout, fleet-wide");
}

#[test]
fn accounts_are_isolated_and_nothing_secret_is_stored_or_shown() {
    let Some(redis) = RedisServer::start_with(free_port(), Some("hunter2")) else {
        return;
    };
    let rt = runtime();
    let (first, second) = (fake(&rt), fake(&rt));
    let key = [7u8; 32];
    let shared = || {
        RedisSession::builder(redis.url())
            .encryption_key(key)
            .build()
            .unwrap()
    };
    let a = layer(&first, shared());
    let b = layer(&second, shared());
    let token_a = rt.block_on(a.access_token()).unwrap();
    let token_b = rt.block_on(b.access_token()).unwrap();
    assert_eq!((first.logins(), second.logins()), (1, 1));
    assert_eq!(b.stats().shared_adoptions, 0);

    // Key names hold no secret and no address; stored sets hold no token bytes.
    let keys = redis.raw("KEYS *\r\n").unwrap();
    let dump = redis.raw("EVAL \"local out = {} for _, k in ipairs(redis.call('KEYS', '*')) do if redis.call('TYPE', k)['ok'] == 'hash' then table.insert(out, redis.call('HGET', k, 'set') or '') end end return out\" 0\r\n").unwrap();
    for shown in [&keys, &dump] {
        for secret in [
            &token_a,
            &token_b,
            &"127.0.0.1".to_owned(),
            &"hunter2".to_owned(),
        ] {
            assert!(!shown.contains(secret.as_str()), "{shown}");
        }
    }
    assert!(keys.contains("iqm-auth:{"), "{keys}");

    // The password of the URL never shows in Debug, errors or logs.
    let wrong = format!("redis://:not-hunter2-either@127.0.0.1:{}/0", redis.port);
    let session = RedisSession::builder(&wrong).build().unwrap();
    let debug = format!("{session:?}");
    let c = layer(&first, session);
    rt.block_on(c.access_token()).unwrap();
    assert_eq!(c.stats().renewed_alone, 1, "{:?}", c.stats());
    assert!(!debug.contains("not-hunter2-either"), "{debug}");
    let bad_url = RedisSession::builder("redis://:hunter2@[::1")
        .build()
        .unwrap_err();
    assert!(!format!("{bad_url} {bad_url:?}").contains("hunter2"));

    // A replica with another key reads no session: one login of its own, counted, and it
    // leaves the set it could not read alone.
    let other_key = RedisSession::builder(redis.url())
        .encryption_key([9u8; 32])
        .build()
        .unwrap();
    let d = layer(&first, other_key);
    rt.block_on(d.access_token()).unwrap();
    assert_eq!(first.logins(), 3);
    assert_eq!(d.stats().shared_unreadable, 1);
    assert_eq!(d.stats().renewed_alone, 1);
}

#[test]
fn garbage_under_the_key_is_ignored_with_a_warning_and_replaced() {
    let Some((redis, rt, iqm)) = setup() else {
        return;
    };
    let shared = || {
        RedisSession::builder(redis.url())
            .namespace("garbage")
            .build()
            .unwrap()
    };
    // The account's key, under the namespace: a first replica makes it.
    let first = layer(&iqm, shared());
    rt.block_on(first.access_token()).unwrap();
    let keys = redis.raw("KEYS iqm-auth:{garbage.*}:session\r\n").unwrap();
    let key = keys
        .lines()
        .find(|line| line.starts_with("iqm-auth:"))
        .expect("the session key")
        .to_owned();
    redis
        .raw(&format!("SET {key} not-a-token-set\r\n"))
        .unwrap();

    let second = layer(&iqm, shared());
    rt.block_on(second.access_token()).unwrap();
    assert_eq!(second.stats().shared_unreadable, 1);
    let kind = redis.raw(&format!("TYPE {key}\r\n")).unwrap();
    assert!(kind.starts_with("+hash"), "replaced by a good set: {kind}");

    let third = layer(&iqm, shared());
    rt.block_on(third.access_token()).unwrap();
    assert_eq!(third.stats().shared_adoptions, 1);
    assert_eq!(iqm.logins(), 2);
}

#[test]
fn a_redis_stalled_past_the_grace_costs_one_renewal_of_its_own() {
    let Some((redis, rt, iqm)) = setup() else {
        return;
    };
    let shared = RedisSession::builder(redis.url())
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let auth = layer(&iqm, shared);
    // Redis answers nothing for 3 s.
    let sleeper = std::thread::spawn({
        let port = redis.port;
        move || {
            let _ = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                std::io::Write::write_all(&mut s, b"DEBUG SLEEP 3\r\n")?;
                let mut reply = [0u8; 5];
                std::io::Read::read_exact(&mut s, &mut reply)
            });
        }
    });
    std::thread::sleep(Duration::from_millis(100));

    let token = rt.block_on(auth.access_token());

    // It tried Redis for the grace (2 s), then renewed on its own, long before the stall ended.
    assert!(token.is_ok(), "{token:?}");
    assert_eq!(iqm.logins(), 1);
    assert_eq!(auth.stats().renewed_alone, 1);
    assert_eq!(auth.stats().shared_adoptions, 0);
    sleeper.join().unwrap();
}
