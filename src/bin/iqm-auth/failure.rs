//! Why a command failed: one line for a person, naming what to fix, and an exit code for a
//! script (the table is in every `--help`).

use std::fmt;

use iqm_auth::{AuthEndpoint, AuthError, FailureClass};
use reqwest::{StatusCode, Url};

#[derive(Debug)]
pub(crate) enum Failure {
    /// Standard output or error could not be written.
    Output(std::io::Error),
    /// A flag, an argument or `--data` that cannot be used.
    Usage(String),
    /// A setting is missing or malformed.
    Config(String),
    /// IQM refused: its message is in the line.
    Refused(String),
    /// IQM could not be reached, failed or limited the rate.
    Unavailable(String),
    /// The shared session's Redis could not be reached.
    Redis(String),
    /// IQM's API answered a request with an HTTP error.
    Http(String),
    /// `exec`: the command could not be run.
    CannotRun(String),
    /// `exec`: the command was not found.
    NotFound(String),
}

impl Failure {
    /// The exit code, as `--help` lists it.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::Output(_) => 1,
            Self::Usage(_) => 2,
            Self::Config(_) => 3,
            Self::Refused(_) => 4,
            Self::Unavailable(_) => 5,
            Self::Redis(_) => 6,
            Self::Http(_) => 7,
            Self::CannotRun(_) => 126,
            Self::NotFound(_) => 127,
        }
    }

    /// A failure of the layer to obtain a token, or of an auth call; `base` is IQM's URL.
    pub(crate) fn from_auth(err: &AuthError, base: &Url) -> Self {
        if err.class() == FailureClass::Rejected {
            let fix = match err.endpoint() {
                Some(AuthEndpoint::Login | AuthEndpoint::Refresh) => {
                    "; check IQM_EMAIL, IQM_PASSWORD, IQM_WORKSPACE_HOST and the client credentials"
                }
                Some(AuthEndpoint::SignUp) => "; check the email and the password",
                _ => "",
            };
            return Self::Refused(format!("{err}{fix}"));
        }
        match err.retry_after() {
            Some(wait) => Self::Unavailable(format!("{err}; try again in {}", seconds(wait))),
            None => Self::Unavailable(format!(
                "{err}; check IQM_BASE_URL ({base}) and the network, or try again later"
            )),
        }
    }

    /// A request through the layer that got no answer: the layer's own failure, or the
    /// request's.
    pub(crate) fn from_request(err: &reqwest_middleware::Error, base: &Url) -> Self {
        match err {
            reqwest_middleware::Error::Middleware(inner) => {
                match inner.downcast_ref::<AuthError>() {
                    Some(auth) => Self::from_auth(auth, base),
                    None => Self::Unavailable(format!("the request failed: {inner}")),
                }
            }
            reqwest_middleware::Error::Reqwest(err) => {
                let what = if err.is_timeout() {
                    "timed out"
                } else if err.is_connect() {
                    "could not connect"
                } else {
                    "got no complete answer"
                };
                Self::Unavailable(format!(
                    "the request to IQM {what}; check IQM_BASE_URL ({base}) and the network, or try again later"
                ))
            }
        }
    }

    /// An HTTP error status from IQM's API.
    pub(crate) fn http(status: StatusCode, method: &str, url: &Url) -> Self {
        Self::Http(format!("IQM answered {status} to {method} {}", url.path()))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Output(err) => write!(f, "could not write the output: {err}"),
            Self::Usage(line)
            | Self::Config(line)
            | Self::Refused(line)
            | Self::Unavailable(line)
            | Self::Redis(line)
            | Self::Http(line)
            | Self::CannotRun(line)
            | Self::NotFound(line) => f.write_str(line),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Self::Output(err)
    }
}

/// A duration as whole seconds, rounded up: "3 s".
pub(crate) fn seconds(duration: std::time::Duration) -> String {
    let whole = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    format!("{whole} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code a failure exits with is in the table every `--help` ends with.
    #[test]
    fn the_help_lists_every_exit_code() {
        let failures = [
            Failure::Output(std::io::Error::other("x")),
            Failure::Usage(String::new()),
            Failure::Config(String::new()),
            Failure::Refused(String::new()),
            Failure::Unavailable(String::new()),
            Failure::Redis(String::new()),
            Failure::Http(String::new()),
            Failure::CannotRun(String::new()),
            Failure::NotFound(String::new()),
        ];
        let help = crate::cli::FOOTER;
        for failure in failures {
            let line = format!("\n  {:<4} ", failure.code());
            assert!(
                help.contains(&line),
                "{failure:?}: {line:?} not in the help"
            );
        }
    }

    #[test]
    fn seconds_round_up() {
        use std::time::Duration;
        assert_eq!(seconds(Duration::from_millis(2001)), "3 s");
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
    }
}
