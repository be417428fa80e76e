//! The command line: flags, subcommands and the help texts, which each stand alone.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// The environment and the exit codes, at the end of every `--help`.
pub(crate) const FOOTER: &str = "\
Environment (a flag given wins over its variable):
  IQM_BASE_URL         --base-url: IQM's API [default: https://api.iqm.com]
  IQM_CLIENT_ID        --client-id: the client id IQM support issued
  IQM_CLIENT_SECRET    its client secret (environment only: a command line is visible to
                       other users of the machine)
  IQM_WORKSPACE_HOST   --workspace-host: the workspace, e.g. acme.iqm.com
  IQM_EMAIL            --email: the user that logs in
  IQM_PASSWORD         that user's password (environment only)
  IQM_REDIS_URL        --redis: join the session shared through this Redis
  IQM_REDIS_NAMESPACE  --namespace: that session's namespace, as the services set it
  IQM_REDIS_KEYS       that session's encryption keys, 64 hex digits each, comma-separated,
                       the first sealing (environment only)
  IQM_TOKEN_STORE      --store: keep the session in this file between runs

Exit codes:
  0    success (exec: the command's own exit code)
  1    the output could not be written
  2    usage: a flag, an argument or --data that cannot be used
  3    configuration: a setting is missing or malformed (the message names it)
  4    IQM refused: wrong credentials, a user not invited, a weak password (IQM's message
       follows)
  5    IQM unreachable, failing or rate-limiting: try again later
  6    the shared session's Redis is unreachable
  7    get, post: IQM's API answered with an HTTP error (its answer is printed)
  126  exec: the command could not be run
  127  exec: the command was not found";

/// Tokens and requests for IQM's API, from the session your services use.
///
/// iqm-auth logs in to the IQM advertising API as the iqm-auth library does, and speaks for the
/// same session your services use: with --redis it joins the session their replicas share
/// through Redis, with --store it keeps the session in a file between runs. A live token found
/// there is used without a login; otherwise one login serves, and its token is shared or
/// saved for the next caller. Without either, every run logs in on its own.
///
/// Nothing secret is printed but the access token that `token` and `exec` are asked for: never a
/// refresh token, password or client secret.
#[derive(Debug, Parser)]
#[command(name = "iqm-auth", version, after_long_help = FOOTER)]
pub(crate) struct Cli {
    /// Log what the session does to standard error (-v: each login, renewal and adoption of a
    /// shared token; -vv: more; -vvv: everything). Never a secret.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    #[command(flatten)]
    pub(crate) settings: Settings,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where IQM, the account and the session are. Secrets are read from the environment only.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Account and session")]
pub(crate) struct Settings {
    /// IQM's API base URL [default: https://api.iqm.com]
    #[arg(
        long,
        env = "IQM_BASE_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) base_url: Option<String>,

    /// The client id IQM support issued (its secret: IQM_CLIENT_SECRET)
    #[arg(
        long,
        env = "IQM_CLIENT_ID",
        value_name = "ID",
        global = true,
        hide_env_values = true
    )]
    pub(crate) client_id: Option<String>,

    /// The workspace host, e.g. acme.iqm.com
    #[arg(
        long,
        env = "IQM_WORKSPACE_HOST",
        value_name = "HOST",
        global = true,
        hide_env_values = true
    )]
    pub(crate) workspace_host: Option<String>,

    /// The user that logs in (the password: IQM_PASSWORD)
    #[arg(
        long,
        env = "IQM_EMAIL",
        value_name = "EMAIL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) email: Option<String>,

    /// Join the session shared through this Redis (redis://, rediss:// for TLS, unix://), as
    /// the services do; a password in it is never printed
    #[arg(
        long,
        env = "IQM_REDIS_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub(crate) redis: Option<String>,

    /// The shared session's namespace, if the services set one
    #[arg(
        long,
        env = "IQM_REDIS_NAMESPACE",
        value_name = "NAME",
        global = true,
        hide_env_values = true
    )]
    pub(crate) namespace: Option<String>,

    /// Keep the session in this file between runs (created 0600; its folder must exist)
    #[arg(
        long,
        env = "IQM_TOKEN_STORE",
        value_name = "PATH",
        global = true,
        hide_env_values = true
    )]
    pub(crate) store: Option<PathBuf>,
}

impl Settings {
    /// The same settings, with a blank value (an empty variable, say) taken as not given, as
    /// `IqmAuth::from_env` takes it.
    pub(crate) fn without_blanks(self) -> Self {
        let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        Self {
            base_url: given(self.base_url),
            client_id: given(self.client_id),
            workspace_host: given(self.workspace_host),
            email: given(self.email),
            redis: given(self.redis),
            namespace: given(self.namespace),
            store: self.store.filter(|path| !path.as_os_str().is_empty()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print an access token for IQM's API.
    ///
    /// Prints the access token of the session, one line: the token your services use when
    /// --redis or --store find a live one (no login), else one from a login, shared or saved
    /// for the next caller. Never the refresh token. Use it as `Authorization: Bearer <token>`,
    /// with `X-IAA-OW-ID: <owId>` (see --json).
    #[command(after_long_help = FOOTER)]
    Token {
        /// Print {"access_token", "owId", "expires_in"} (seconds left) as JSON instead
        #[arg(long)]
        json: bool,
    },

    /// Run a command with IQM_ACCESS_TOKEN and IQM_OW_ID set.
    ///
    /// Gets a token as `token` does, then runs COMMAND with IQM_ACCESS_TOKEN (the access token)
    /// and IQM_OW_ID (the workspace id) in its environment, and without IQM_PASSWORD,
    /// IQM_CLIENT_SECRET or IQM_REDIS_KEYS: it needs the token, not the credentials. The
    /// command takes iqm-auth's place (on Unix), so its exit code, signals and standard streams
    /// are its own. Put `--` before a command that takes flags:
    ///
    ///   iqm-auth exec -- curl -sf -H "Authorization: Bearer $IQM_ACCESS_TOKEN" ...
    ///
    /// (in single quotes, or a script, so that the shell expands the variables in the command).
    #[command(after_long_help = FOOTER)]
    Exec {
        /// The command and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },

    /// Send one authenticated GET to IQM's API and print the answer.
    ///
    /// Sends GET PATH (e.g. /api/v3/ua/profile, below the base URL) with the session's token
    /// and workspace id; a 401 renews the token once and replays the request once. Prints the
    /// answer's body, pretty when it is JSON; exits 7 if the status is an HTTP error.
    #[command(after_long_help = FOOTER)]
    Get {
        /// The path below the base URL, with its query if any
        path: String,
    },

    /// Send one authenticated POST with a JSON body to IQM's API and print the answer.
    ///
    /// Sends POST PATH with --data as its JSON body (Content-Type: application/json), the
    /// session's token and workspace id; a 401 renews the token once and replays the request
    /// once. Prints the answer's body, pretty when it is JSON; exits 7 if the status is an HTTP
    /// error.
    #[command(after_long_help = FOOTER)]
    Post {
        /// The path below the base URL, with its query if any
        path: String,
        /// The JSON body: the text itself, @FILE for a file's, or - for standard input's
        #[arg(long, value_name = "JSON")]
        data: Option<String>,
    },

    /// Show the account and the session, without a login and without a secret.
    ///
    /// Shows the account (user, workspace host, base URL); whether a live token is held, and
    /// for how long; the token store's path and whether its set is this account's; the shared
    /// session's generation, token, lease, pause and failed renewals in a row. Makes no call to
    /// IQM and needs no IQM_PASSWORD. Prints no token, refresh token, password or secret.
    /// Exits 6 (after printing) if the shared session's Redis is unreachable.
    #[command(after_long_help = FOOTER)]
    Status {
        /// Print it as JSON
        #[arg(long)]
        json: bool,
    },

    /// Log the session out at IQM and forget it.
    ///
    /// Logs out the session's live token at IQM and clears the token store and the shared
    /// session: with --redis that is every replica's session, and the next request anywhere
    /// logs in again. Without a live token, only clears them (no call to IQM).
    #[command(after_long_help = FOOTER)]
    Logout,

    /// Create the account of an invited user.
    ///
    /// Signs EMAIL up at IQM with the client credentials (IQM_CLIENT_ID, IQM_CLIENT_SECRET).
    /// The password is asked for twice on the terminal, without echo, or read from the first
    /// line of standard input when that is not a terminal:
    ///
    ///   printf '%s\n' "$NEW_PASSWORD" | iqm-auth sign-up new@acme.com
    ///
    /// IQM wants at least 8 characters, one upper-case, one lower-case and one special. Prints
    /// no token: log in as the new user with IQM_EMAIL and IQM_PASSWORD.
    #[command(after_long_help = FOOTER)]
    SignUp {
        /// The invited user's email
        email: String,
    },
}

impl Command {
    /// Which settings the command cannot do without.
    pub(crate) fn needs(&self) -> Needs {
        match self {
            Self::Token { .. } | Self::Exec { .. } | Self::Get { .. } | Self::Post { .. } => {
                Needs::Login
            }
            // A logout sends the session's token, never the password; but it takes that token
            // through the layer, which logs in if the session ended between the look and the take.
            Self::Logout => Needs::Login,
            Self::Status { .. } => Needs::Account,
            Self::SignUp { .. } => Needs::Client,
        }
    }
}

/// The settings a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Everything a login takes.
    Login,
    /// What names the account (and its session), not the password.
    Account,
    /// The client credentials only.
    Client,
}
