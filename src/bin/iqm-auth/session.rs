//! `logout` and `sign-up`: the auth calls that are not about a token for this run.

use std::io::{BufRead, IsTerminal, Write};

use iqm_auth::{IqmAuth, Secret};

use crate::Done;
use crate::cli::{Needs, Settings};
use crate::failure::Failure;
use crate::settings::{Account, layer};
use crate::shared::check_shared;

pub(crate) async fn logout(auth: &IqmAuth, settings: &Settings) -> Result<Done, Failure> {
    if settings.redis.is_none() && settings.store.is_none() {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "nothing to log out: without --redis or --store, iqm-auth keeps no session between runs"
        )?;
        return Ok(Done::Exit);
    }
    let status = auth.status().await;
    check_shared(&status.shared)?;
    let shared = status
        .shared
        .and_then(Result::ok)
        .and_then(|shared| shared.tokens);
    let stored = status.stored.ok().flatten();
    let live = [shared, stored]
        .into_iter()
        .flatten()
        .any(|tokens| tokens.is_usable());
    let base = auth.base_url();
    if live {
        // The layer logs out the token it holds: take the session's (no auth call).
        auth.access_token()
            .await
            .map_err(|err| Failure::from_auth(&err, base))?;
    }
    auth.logout()
        .await
        .map_err(|err| match Failure::from_auth(&err, base) {
            Failure::Refused(line) => Failure::Refused(format!(
                "{line}; the session is forgotten here all the same"
            )),
            Failure::Unavailable(line) => Failure::Unavailable(format!(
                "{line}; the session is forgotten here all the same"
            )),
            other => other,
        })?;
    let mut out = std::io::stdout().lock();
    if live {
        writeln!(
            out,
            "logged out: IQM ended the session's token; the session is cleared, and the next command or request logs in"
        )?;
    } else {
        writeln!(
            out,
            "no live token to log out at IQM; the session is cleared, and the next command or request logs in"
        )?;
    }
    Ok(Done::Exit)
}

pub(crate) async fn sign_up(settings: &Settings, email: &str) -> Result<Done, Failure> {
    let account = Account::resolve(settings, Needs::Client)?;
    if email.trim().is_empty() {
        return Err(Failure::Usage(
            "sign-up needs the invited user's email".into(),
        ));
    }
    let password = new_password(email)?;
    // A sign-up has nothing to do with the session: neither the store nor Redis is touched.
    let alone = Settings {
        redis: None,
        store: None,
        ..settings.clone()
    };
    let auth = layer(&account.signing_up(email, password.clone()), &alone)?;
    auth.sign_up(email, password.expose())
        .await
        .map_err(|err| Failure::from_auth(&err, auth.base_url()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "signed up {email}: log in as that user with IQM_EMAIL and IQM_PASSWORD"
    )?;
    Ok(Done::Exit)
}

/// The new password: asked twice on the terminal without echo, or the first line of standard
/// input when that is not a terminal (a pipe, a file).
fn new_password(email: &str) -> Result<Secret, Failure> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map(Secret::new)
                .map_err(|err| {
                    Failure::Usage(format!(
                        "could not read the password from the terminal: {err}"
                    ))
                })
        };
        let password = ask(&format!("New password for {email}: "))?;
        if ask("The same password again: ")? != password {
            return Err(Failure::Usage(
                "the two passwords differ; nothing was sent".into(),
            ));
        }
        password
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|err| {
            Failure::Usage(format!(
                "could not read the password from standard input: {err}"
            ))
        })?;
        let password = Secret::new(line.trim_end_matches(['\r', '\n']));
        drop(line);
        password
    };
    if password.expose().is_empty() {
        return Err(Failure::Usage(
            "no password given: type it when asked, or pipe it on standard input".into(),
        ));
    }
    Ok(password)
}
