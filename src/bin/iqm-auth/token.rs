//! `token` and `exec`: the session's access token, printed or handed to a command.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use iqm_auth::IqmAuth;

use crate::Done;
use crate::cli::Settings;
use crate::failure::Failure;
use crate::shared::check_shared_session;

/// The secrets a command run by `exec` does not inherit: it is handed the token instead.
const WITHHELD_FROM_COMMANDS: [&str; 3] = ["IQM_PASSWORD", "IQM_CLIENT_SECRET", "IQM_REDIS_KEYS"];

/// An access token and what goes with it.
pub(crate) struct Token {
    pub(crate) access_token: String,
    pub(crate) ow_id: u64,
    pub(crate) expires_in: Duration,
}

/// The session's live token without an auth call when the store or the shared session holds
/// one, else through one login (or refresh), which is then saved and shared.
pub(crate) async fn obtain(auth: &IqmAuth) -> Result<Token, Failure> {
    check_shared_session(auth).await?;
    let access_token = auth
        .access_token()
        .await
        .map_err(|err| Failure::from_auth(&err, auth.base_url()))?;
    Ok(Token {
        access_token,
        ow_id: auth.ow_id().unwrap_or_default(),
        expires_in: auth.stats().token_expires_in.unwrap_or_default(),
    })
}

pub(crate) async fn print(auth: &IqmAuth, json: bool) -> Result<Done, Failure> {
    let token = obtain(auth).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let answer = serde_json::json!({
            "access_token": token.access_token,
            "owId": token.ow_id,
            "expires_in": token.expires_in.as_secs(),
        });
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "{}", token.access_token)?;
    }
    out.flush()?;
    Ok(Done::Exit)
}

pub(crate) async fn exec(auth: &IqmAuth, command: Vec<OsString>) -> Result<Done, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::Usage("exec needs a command to run".into()));
    };
    let token = obtain(auth).await?;
    let mut child = std::process::Command::new(program);
    child
        .args(args)
        .env("IQM_ACCESS_TOKEN", token.access_token)
        .env("IQM_OW_ID", token.ow_id.to_string());
    for secret in WITHHELD_FROM_COMMANDS {
        child.env_remove(secret);
    }
    Ok(Done::Exec(child))
}

/// Runs `command` in this process's place (on Unix: its exit code, signals and streams are its
/// own), or as a child whose exit code is passed through.
pub(crate) fn become_command(mut command: std::process::Command) -> Result<(), Failure> {
    let program = command.get_program().to_string_lossy().into_owned();
    #[cfg(unix)]
    let err = std::os::unix::process::CommandExt::exec(&mut command);
    #[cfg(not(unix))]
    let err = match command.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(err) => err,
    };
    Err(match err.kind() {
        std::io::ErrorKind::NotFound => Failure::NotFound(format!("command not found: {program}")),
        _ => Failure::CannotRun(format!("could not run {program}: {err}")),
    })
}

/// A token store that could not be used costs the next run a login: say so, once.
pub(crate) fn warn_about_store(auth: &IqmAuth, settings: &Settings) {
    let Some(path) = &settings.store else {
        return;
    };
    let stats = auth.stats();
    let problem = if stats.store_errors > 0 {
        "could not be read or written (-v tells why)"
    } else if stats.foreign_sessions_ignored > 0 {
        "holds another account's session, which was ignored"
    } else {
        return;
    };
    let _ = writeln!(
        std::io::stderr(),
        "iqm-auth: warning: the token store {} {problem}",
        path.display()
    );
}
