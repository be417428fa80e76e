//! `iqm-auth logout` and `sign-up`.

use iqm_auth::testing::EMAIL;

use crate::redis_server::RedisServer;
use crate::support::{Setup, run_with_input};

#[test]
fn logout_ends_the_shared_session_for_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let setup = Setup::new();
    let replica = setup.replica(&redis, None);
    setup.rt.block_on(replica.access_token()).unwrap();
    let url = redis.url();

    let run = setup.run(&["logout", "--redis", &url]);

    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("logged out: "), "{run:?}");
    assert_eq!((setup.iqm.logouts(), setup.auth_calls()), (1, (1, 0)));
    let status = setup.run(&["status", "--json", "--redis", &url]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shared"]["set"], serde_json::Value::Null);
    assert_eq!(status["token"]["held"], false);

    // The next token anywhere is one new login, shared again.
    let token = setup.run(&["token", "--redis", &url]);
    assert_eq!(token.code, 0, "{token:?}");
    assert_eq!(setup.auth_calls(), (2, 0));

    // With nothing live, a logout only clears.
    assert_eq!(setup.run(&["logout", "--redis", &url]).code, 0);
    let again = setup.run(&["logout", "--redis", &url]);
    assert!(again.stdout.starts_with("no live token"), "{again:?}");
    assert_eq!((setup.iqm.logouts(), setup.auth_calls()), (2, (2, 0)));
}

#[test]
fn sign_up_reads_the_password_from_standard_input() {
    let setup = Setup::new();
    let invited = "new@acme.example";
    setup.iqm.invite(invited);
    let sign_up = |email: &str, password: &str| {
        let mut command = setup.command(&["sign-up", email]);
        // A sign-up needs the client credentials only.
        for name in ["IQM_EMAIL", "IQM_PASSWORD", "IQM_WORKSPACE_HOST"] {
            command.env_remove(name);
        }
        run_with_input(command, &format!("{password}\n"))
    };

    let weak = sign_up(invited, "weak");
    assert_eq!(weak.code, 4, "{weak:?}");
    assert!(
        weak.stderr
            .contains("Password must have at least 8 characters"),
        "{weak:?}"
    );

    let strong = "Str0ng!Pass";
    let signed_up = sign_up(invited, strong);
    assert_eq!(signed_up.code, 0, "{signed_up:?}");
    assert!(
        signed_up
            .stdout
            .starts_with(&format!("signed up {invited}"))
    );
    assert!(!signed_up.output().contains(strong));

    let not_invited = sign_up(EMAIL, strong);
    assert_eq!(not_invited.code, 4, "{not_invited:?}");
    assert!(
        not_invited
            .stderr
            .contains("User is not invited to this workspace."),
        "{not_invited:?}"
    );

    let empty = sign_up(invited, "");
    assert_eq!(empty.code, 2, "{empty:?}");

    assert_eq!(setup.iqm.sign_ups(), 3);
    assert_eq!(setup.auth_calls(), (0, 0));
}
