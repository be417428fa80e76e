//! `iqm-auth exec`: a command run with the token, its exit code passed through.

use iqm_auth::testing::OW_ID;

use crate::support::Setup;

#[test]
fn the_command_gets_the_token_and_workspace_and_its_exit_code_is_passed_through() {
    let setup = Setup::new();
    let store = setup.store();
    let token = setup.run(&["token", "--store", &store]);
    assert_eq!(token.code, 0, "{token:?}");

    let run = setup.run(&[
        "exec",
        "--store",
        &store,
        "--",
        "sh",
        "-c",
        r#"printf '%s %s %s' "$IQM_ACCESS_TOKEN" "$IQM_OW_ID" "${IQM_PASSWORD:-no-password}"; exit 7"#,
    ]);

    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(
        run.stdout,
        format!("{} {OW_ID} no-password", token.stdout.trim())
    );
    assert_eq!(setup.auth_calls(), (1, 0));
}

#[test]
fn a_command_that_does_not_exist_exits_127() {
    let setup = Setup::new();

    let run = setup.run(&["exec", "--", "iqm-auth-test-no-such-command"]);

    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr
            .contains("command not found: iqm-auth-test-no-such-command"),
        "{run:?}"
    );
}
