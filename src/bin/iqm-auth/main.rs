//! `iqm-auth`: the IQM session on the command line (feature `cli`), for scripts, operators and
//! programs in other languages. It speaks for the session the services use (shared through
//! Redis, or kept in a file), so a token it prints costs no login while that session is live.
//! See `iqm-auth --help`.
#![deny(unsafe_code)]
#![warn(
    rust_2018_idioms,
    unreachable_pub,
    missing_debug_implementations,
    clippy::dbg_macro,
    clippy::todo,
    clippy::unwrap_used
)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;
mod failure;
mod request;
mod session;
mod settings;
mod shared;
mod status;
mod token;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::failure::Failure;

/// How a command ends, once its runtime has shut down.
enum Done {
    /// Exit successfully.
    Exit,
    /// Become this command (`exec`).
    Exec(std::process::Command),
}

/// Names the program only: a command's `Debug` shows its environment, the token included.
impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exit => f.write_str("Exit"),
            Self::Exec(command) => f.debug_tuple("Exec").field(&command.get_program()).finish(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_to_stderr(cli.verbose);
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::Output)
        .and_then(|runtime| runtime.block_on(run(cli)));
    // The runtime is gone by now: every store write and Redis call has landed or been dropped.
    let outcome = match outcome {
        Ok(Done::Exec(command)) => token::become_command(command),
        other => other.map(drop),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Nothing is left to tell if standard error is gone too.
            let _ = writeln!(std::io::stderr(), "iqm-auth: {failure}");
            ExitCode::from(failure.code())
        }
    }
}

async fn run(cli: Cli) -> Result<Done, Failure> {
    let settings = cli.settings.without_blanks();
    if let Command::SignUp { email } = &cli.command {
        return session::sign_up(&settings, email).await;
    }
    let account = settings::Account::resolve(&settings, cli.command.needs())?;
    let auth = settings::layer(&account, &settings)?;
    let done = match cli.command {
        Command::Token { json } => token::print(&auth, json).await?,
        Command::Exec { command } => token::exec(&auth, command).await?,
        Command::Get { path } => request::send(&auth, reqwest::Method::GET, &path, None).await?,
        Command::Post { path, data } => {
            request::send(&auth, reqwest::Method::POST, &path, data.as_deref()).await?
        }
        Command::Status { json } => status::show(&auth, &account, &settings, json).await?,
        Command::Logout => session::logout(&auth, &settings).await?,
        Command::SignUp { .. } => unreachable!("handled above"),
    };
    token::warn_about_store(&auth, &settings);
    Ok(done)
}

/// `-v`: the library's tracing events on standard error, at info (`-v`), debug (`-vv`) or
/// trace (`-vvv`); other crates' warnings only. Without it, nothing but the command's own line.
fn log_to_stderr(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = match verbose {
        0 => return,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = Targets::new()
        .with_target("iqm_auth", level)
        .with_default(LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}
