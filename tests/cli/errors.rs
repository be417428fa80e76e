//! Failures: one line naming what to fix, and the exit code `--help` documents for it.

use iqm_auth::testing::PASSWORD;

use crate::support::{Setup, closed_port};

#[test]
fn a_missing_variable_exits_3_naming_it() {
    let setup = Setup::new();
    let mut command = setup.command(&["token"]);
    command
        .env_remove("IQM_CLIENT_SECRET")
        .env_remove("IQM_EMAIL");

    let run = crate::support::run(command);

    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(
        run.stderr,
        "iqm-auth: missing IQM_CLIENT_SECRET, IQM_EMAIL (or --email): set them in the \
         environment (see iqm-auth --help)\n"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(setup.auth_calls(), (0, 0));
}

#[test]
fn a_wrong_password_exits_4_with_iqms_message() {
    let setup = Setup::new();
    let wrong = "Wrong-Horse-2!";
    let mut command = setup.command(&["token"]);
    command.env("IQM_PASSWORD", wrong);

    let run = crate::support::run(command);

    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(
        run.stderr,
        "iqm-auth: IQM rejected the login call (403 Forbidden): User doesn't exist or user is \
         not allowed to provided workspace.; check IQM_EMAIL, IQM_PASSWORD, IQM_WORKSPACE_HOST \
         and the client credentials\n"
    );
    assert!(!run.output().contains(wrong));
    assert!(!run.output().contains(PASSWORD));
    assert_eq!(run.stdout, "");
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn an_unreachable_iqm_exits_5_naming_the_base_url() {
    let setup = Setup::new();
    let base = format!("http://127.0.0.1:{}", closed_port());
    let mut command = setup.command(&["token"]);
    command.env("IQM_BASE_URL", &base);

    let run = crate::support::run(command);

    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("could not connect"), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("check IQM_BASE_URL ({base}/)")),
        "{run:?}"
    );
}

#[test]
fn an_unreachable_redis_exits_6_before_any_auth_call() {
    let setup = Setup::new();
    let redis = format!("redis://127.0.0.1:{}/0", closed_port());

    for args in [
        &["token", "--redis", &redis][..],
        &["get", "/x", "--redis", &redis],
    ] {
        let run = setup.run(args);
        assert_eq!(run.code, 6, "{run:?}");
        assert!(
            run.stderr.contains("check --redis (IQM_REDIS_URL)"),
            "{run:?}"
        );
    }

    assert_eq!(setup.auth_calls(), (0, 0));
    assert_eq!(setup.iqm.api_calls(), 0);
}

#[test]
fn a_malformed_setting_exits_3_and_a_bad_flag_2() {
    let setup = Setup::new();

    let bad_url = setup.run(&["token", "--base-url", "ftp://iqm.example"]);
    assert_eq!(bad_url.code, 3, "{bad_url:?}");
    assert!(
        bad_url.stderr.contains("invalid IQM base URL"),
        "{bad_url:?}"
    );

    let mut bad_key = setup.command(&["token", "--redis", "redis://127.0.0.1:1/0"]);
    bad_key.env("IQM_REDIS_KEYS", "abc");
    let bad_key = crate::support::run(bad_key);
    assert_eq!(bad_key.code, 3, "{bad_key:?}");
    assert_eq!(
        bad_key.stderr,
        "iqm-auth: IQM_REDIS_KEYS: key 1 is not 64 hex digits (32 bytes)\n"
    );

    let bad_flag = setup.run(&["token", "--no-such-flag"]);
    assert_eq!(bad_flag.code, 2, "{bad_flag:?}");

    assert_eq!(setup.auth_calls(), (0, 0));
}

#[test]
fn every_help_stands_alone() {
    let setup = Setup::new();
    for command in [
        "token", "exec", "get", "post", "status", "logout", "sign-up",
    ] {
        let run = setup.run(&[command, "--help"]);
        assert_eq!(run.code, 0, "{run:?}");
        for needed in [
            "Usage: iqm-auth",
            "IQM_CLIENT_SECRET",
            "--redis",
            "--store",
            "Exit codes:",
            "127  exec: the command was not found",
        ] {
            assert!(run.stdout.contains(needed), "{command}: no {needed:?}");
        }
    }
}
