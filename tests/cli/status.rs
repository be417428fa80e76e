//! `iqm-auth status`: the account and what its session holds, and never a secret.

use iqm_auth::testing::{CLIENT_SECRET, EMAIL, OW_ID, PASSWORD, WORKSPACE_HOST};

use crate::redis_server::{RedisServer, free_port};
use crate::support::{Setup, closed_port, stored_refresh_token};

#[test]
fn status_tells_the_shared_session_and_the_store_and_no_secret() {
    let redis_password = "redis-pass-3f9c";
    let Some(redis) = RedisServer::start_with(free_port(), Some(redis_password)) else {
        return;
    };
    let setup = Setup::new();
    let store = setup.store();
    let replica = setup.replica(&redis, Some(&store));
    let token = setup.rt.block_on(replica.access_token()).unwrap();
    let refresh_token = stored_refresh_token(&store);
    let args = ["--redis", &redis.url(), "--store", &store];

    let mut text = setup.command(&[&["status"][..], &args].concat());
    // Status makes no auth call, so it needs no password.
    text.env_remove("IQM_PASSWORD");
    let text = crate::support::run(text);
    let json = setup.run(&[&["status", "--json"][..], &args].concat());

    assert_eq!((text.code, json.code), (0, 0), "{text:?} {json:?}");
    for run in [&text, &json] {
        let output = run.output();
        for secret in [
            PASSWORD,
            CLIENT_SECRET,
            token.as_str(),
            refresh_token.as_str(),
            redis_password,
        ] {
            assert!(!output.contains(secret), "{secret:?} in {output}");
        }
    }
    let line = |start: &str| {
        text.stdout
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in {}", text.stdout))
            .to_owned()
    };
    assert_eq!(line("user:"), format!("user:            {EMAIL}"));
    assert_eq!(
        line("workspace host:"),
        format!("workspace host:  {WORKSPACE_HOST}")
    );
    assert!(line("token:").ends_with(&format!("(owId {OW_ID}), in the shared session")));
    assert_eq!(line("token store:"), format!("token store:     {store}"));
    assert!(line("  set:").contains("this account's"));
    assert_eq!(
        line("shared session:"),
        format!("shared session:  redis://127.0.0.1:{}/0", redis.port)
    );
    assert!(line("  generation:").starts_with("  generation:    1 (epoch "));
    assert_eq!(line("  lease:"), "  lease:         free");
    assert_eq!(
        line("  renewals:"),
        "  renewals:      not paused; 0 failed in a row"
    );

    let status: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(status["account"]["user"], EMAIL);
    assert_eq!(status["token"]["held"], true);
    assert_eq!(status["token"]["source"], "shared");
    assert_eq!(status["token"]["owId"], OW_ID);
    assert_eq!(status["store"]["path"], store.as_str());
    assert_eq!(status["store"]["set"]["this_account"], true);
    assert_eq!(status["store"]["set"]["has_refresh_token"], true);
    let shared = &status["shared"];
    assert_eq!(shared["reachable"], true);
    assert_eq!(shared["generation"], 1);
    assert_eq!(shared["set"]["this_account"], true);
    assert_eq!(shared["lease"]["held"], false);
    assert_eq!(shared["paused_for"], serde_json::Value::Null);
    assert_eq!(shared["failed_renewals_in_a_row"], 0);
    // The replica, the two statuses.
    assert_eq!(shared["replicas"], 3);

    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn status_of_another_accounts_store_says_it_is_ignored() {
    let setup = Setup::new();
    let store = setup.store();
    assert_eq!(setup.run(&["token", "--store", &store]).code, 0);

    let mut other = setup.command(&["status", "--store", &store]);
    other.env("IQM_EMAIL", "someone-else@acme.example");
    let other = crate::support::run(other);

    assert_eq!(other.code, 0, "{other:?}");
    assert!(
        other.stdout.contains("another account's (ignored)"),
        "{}",
        other.stdout
    );
    assert!(
        other.stdout.contains("token:           none live"),
        "{}",
        other.stdout
    );
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn status_with_redis_unreachable_prints_what_it_knows_and_exits_6() {
    let setup = Setup::new();
    let redis = format!("redis://127.0.0.1:{}/0", closed_port());

    let run = setup.run(&["status", "--redis", &redis]);

    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stdout.contains(&format!("user:            {EMAIL}")),
        "{run:?}"
    );
    assert!(run.stdout.contains("  unreachable:   "), "{run:?}");
    assert_eq!(setup.auth_calls(), (0, 0));
}

#[test]
fn status_shows_a_held_lease_and_a_paused_fleet() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let setup = Setup::new();
    let replica = setup.replica(&redis, None);
    setup.rt.block_on(replica.access_token()).unwrap();
    // What a holder whose renewals failed twice leaves in Redis, written as its scripts do.
    let session = redis
        .keys("iqm-auth:")
        .into_iter()
        .find(|key| key.ends_with(b":session"))
        .expect("the shared session's key");
    let lease = [&session[..session.len() - "session".len()], b"lease"].concat();
    let time = redis.command(&[b"TIME"]);
    let now_ms: u64 = time.items()[0].text().parse::<u64>().unwrap() * 1000;
    let paused_until = (now_ms + 60_000).to_string();
    redis.command(&[b"SET", &lease, b"some-replica:1", b"PX", b"20000"]);
    redis.command(&[b"HSET", &session, b"failures", b"2"]);
    redis.command(&[b"HSET", &session, b"paused_until", paused_until.as_bytes()]);

    let json = setup.run(&["status", "--json", "--redis", &redis.url()]);
    let text = setup.run(&["status", "--redis", &redis.url()]);

    assert_eq!((json.code, text.code), (0, 0), "{json:?} {text:?}");
    let shared = &serde_json::from_str::<serde_json::Value>(&json.stdout).unwrap()["shared"];
    assert_eq!(shared["lease"]["held"], true);
    assert!(shared["lease"]["expires_in"].as_u64().unwrap() <= 20);
    assert!(shared["paused_for"].as_u64().unwrap() <= 60);
    assert_eq!(shared["failed_renewals_in_a_row"], 2);
    assert!(
        text.stdout.contains("  lease:         held, "),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("  renewals:      paused "),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("; 2 failed in a row"),
        "{}",
        text.stdout
    );
    assert_eq!(setup.auth_calls(), (1, 0));
}
