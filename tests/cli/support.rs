//! Runs the binary against a fake IQM, with the fake's account in its environment and nothing
//! else of the test's (no `IQM_*` of the machine's leaks in).

use std::io::Write;
use std::process::{Command, Stdio};

use iqm_auth::testing::{CLIENT_ID, CLIENT_SECRET, EMAIL, FakeIqm, PASSWORD, WORKSPACE_HOST};
use iqm_auth::{IqmAuth, RedisSession};

use crate::redis_server::RedisServer;

/// A fake IQM served by a runtime of its own (so it answers while a test waits for the
/// binary), and a folder for token stores.
pub struct Setup {
    pub rt: tokio::runtime::Runtime,
    pub iqm: FakeIqm,
    pub folder: tempfile::TempDir,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for checking that something appears in neither.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Setup {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let iqm = rt.block_on(FakeIqm::start()).expect("fake IQM");
        Self {
            rt,
            iqm,
            folder: tempfile::tempdir().expect("a folder"),
        }
    }

    /// The path of a token store file in the test's folder.
    pub fn store(&self) -> String {
        self.folder
            .path()
            .join("session.json")
            .to_string_lossy()
            .into_owned()
    }

    /// The binary with the fake's account in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iqm-auth"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("IQM_BASE_URL", self.iqm.base_url())
            .env("IQM_CLIENT_ID", CLIENT_ID)
            .env("IQM_CLIENT_SECRET", CLIENT_SECRET)
            .env("IQM_WORKSPACE_HOST", WORKSPACE_HOST)
            .env("IQM_EMAIL", EMAIL)
            .env("IQM_PASSWORD", PASSWORD)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.command(args))
    }

    /// A replica of a service in this process, sharing its session through `redis` (and
    /// keeping it in `store`, if given).
    pub fn replica(&self, redis: &RedisServer, store: Option<&str>) -> IqmAuth {
        let shared = RedisSession::builder(redis.url())
            .build()
            .expect("redis URL");
        let mut builder = self.iqm.auth_builder().shared_session(shared);
        if let Some(path) = store {
            builder = builder.token_store(std::sync::Arc::new(iqm_auth::FileTokenStore::new(path)));
        }
        builder.build().expect("valid config")
    }

    /// (logins, refreshes) the fake received.
    pub fn auth_calls(&self) -> (u64, u64) {
        (self.iqm.logins(), self.iqm.refreshes())
    }
}

pub fn run(mut command: Command) -> Run {
    let output = command.output().expect("the binary runs");
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `command` with `input` on its standard input.
pub fn run_with_input(mut command: Command, input: &str) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("stdin takes the input");
    let output = child.wait_with_output().expect("the binary ends");
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The refresh token a file token store holds.
pub fn stored_refresh_token(path: &str) -> String {
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the store exists")).expect("JSON");
    file["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned()
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    crate::redis_server::free_port()
}
