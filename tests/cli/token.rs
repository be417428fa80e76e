//! `iqm-auth token`: the session's token, without a login while the session holds a live one.

use iqm_auth::testing::{OW_ID, PASSWORD};

use crate::redis_server::RedisServer;
use crate::support::{Setup, stored_refresh_token};

#[test]
fn five_runs_against_a_session_a_replica_filled_cost_no_auth_call() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let setup = Setup::new();
    let replica = setup.replica(&redis, None);
    let token = setup.rt.block_on(replica.access_token()).unwrap();
    assert_eq!(setup.auth_calls(), (1, 0));

    for _ in 0..5 {
        let run = setup.run(&["token", "--redis", &redis.url()]);
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, token.as_str()),
            "{run:?}"
        );
        assert_eq!(run.stderr, "");
    }

    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn json_gives_the_token_its_workspace_and_its_seconds_left() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let setup = Setup::new();
    let replica = setup.replica(&redis, None);
    let token = setup.rt.block_on(replica.access_token()).unwrap();

    let run = setup.run(&["token", "--json", "--redis", &redis.url()]);

    assert_eq!(run.code, 0, "{run:?}");
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["access_token", "owId", "expires_in"]);
    assert_eq!(answer["access_token"], token.as_str());
    assert_eq!(answer["owId"], OW_ID);
    // The fake's tokens live an hour.
    let left = answer["expires_in"].as_u64().unwrap();
    assert!(left <= 3600, "{left}");
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn a_file_store_serves_every_run_after_the_first_login() {
    let setup = Setup::new();
    let store = setup.store();

    let first = setup.run(&["token", "--store", &store]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(setup.auth_calls(), (1, 0));
    let refresh_token = stored_refresh_token(&store);

    for _ in 0..4 {
        let run = setup.run(&["token", "--store", &store]);
        assert_eq!((run.code, &run.stdout), (0, &first.stdout), "{run:?}");
        assert!(!run.output().contains(&refresh_token));
    }
    assert!(!first.output().contains(&refresh_token));
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn a_sealed_shared_session_is_read_with_the_services_key_and_refused_without() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let setup = Setup::new();
    let key = [7u8; 32];
    let shared = iqm_auth::RedisSession::builder(redis.url())
        .encryption_key(key)
        .build()
        .unwrap();
    let replica = setup
        .iqm
        .auth_builder()
        .shared_session(shared)
        .build()
        .unwrap();
    let token = setup.rt.block_on(replica.access_token()).unwrap();

    let without = setup.run(&["token", "--redis", &redis.url()]);
    assert_eq!(without.code, 3, "{without:?}");
    assert!(without.stderr.contains("IQM_REDIS_KEYS"), "{without:?}");
    assert_eq!(without.stdout, "");

    let mut with = setup.command(&["token", "--redis", &redis.url()]);
    with.env("IQM_REDIS_KEYS", "07".repeat(32));
    let with = crate::support::run(with);
    assert_eq!(
        (with.code, with.stdout.trim()),
        (0, token.as_str()),
        "{with:?}"
    );

    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn verbose_logs_the_login_on_standard_error_and_no_secret() {
    let setup = Setup::new();

    let run = setup.run(&["token", "-v"]);

    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("logged in to IQM"), "{}", run.stderr);
    let token = run.stdout.trim();
    assert!(!run.stderr.contains(token), "{}", run.stderr);
    assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    assert_eq!(setup.auth_calls(), (1, 0));
}
