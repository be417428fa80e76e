//! A replica as a process of its own: the test binary run again with `FLEET_*` variables. It
//! follows a list of steps and reports on standard output, in lines starting with `FLEET `.
//!
//! Steps (comma-separated): `get:N` sends N requests at once; `for:MS` sends requests back to
//! back (4 at a time) for MS milliseconds; `pace:EVERY:MS` sends one request every EVERY ms for
//! MS milliseconds; `wait` reports `FLEET waiting` and waits for a line on standard input;
//! `serve:EVERY` reports `FLEET waiting` too, and sends one request every EVERY ms until that
//! line comes; `logout` logs out. Last comes `FLEET result …`.
//!
//! The variables: `FLEET_BASE_URL`, `FLEET_REDIS_URL`, `FLEET_STEPS`; optionally
//! `FLEET_NAMESPACE`, `FLEET_LEASE_TTL_MS`, `FLEET_EMAIL` and `FLEET_PASSWORD` (another user
//! than the fake's), `FLEET_CLIENT_ID` and `FLEET_CLIENT_SECRET` (another client),
//! `FLEET_KEYS` (encryption keys as hex, comma-separated, the first sealing),
//! `FLEET_TOKEN_STORE` (the path of a file token store), `FLEET_REQUEST_RATE` (`CALLS/MS`: a
//! request rate of CALLS per MS milliseconds) and `FLEET_RATE_LIMIT_WAIT_MS`. A replica with a wall clock offset
//! runs under libfaketime (`LD_PRELOAD`, `FAKETIME`, monotonic time left alone).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use iqm_auth::reqwest_middleware::{ClientBuilder, Middleware, Next};
use iqm_auth::testing::FakeIqm;
use iqm_auth::{IqmAuth, RedisSession, RedisSessionBuilder};

/// How a replica is set up, passed to its process as `FLEET_*` variables.
#[derive(Clone, Default)]
pub struct ReplicaConfig {
    pub base_url: String,
    pub redis_url: String,
    pub namespace: Option<String>,
    pub lease_ttl_ms: Option<u64>,
    pub steps: String,
    /// The user (email, password) the replica logs in as; the fake's own unless set.
    pub user: Option<(String, String)>,
    /// The client credentials (id, secret); the fake's own unless set.
    pub client: Option<(String, String)>,
    /// The shared session's encryption keys, the first sealing; none unless set.
    pub keys: Vec<[u8; 32]>,
    /// The path of a file token store; a memory store unless set.
    pub token_store: Option<PathBuf>,
    /// The wall clock's offset under libfaketime (`FAKETIME`, e.g. `+5m`); monotonic time is
    /// left alone.
    pub wall_clock_offset: Option<String>,
    /// Where Redis is when it is not one server: `FLEET_CLUSTER_URLS` or
    /// `FLEET_SENTINEL_URLS` and `FLEET_SENTINEL_MASTER` (see `topologies.rs`).
    pub topology_env: Vec<(&'static str, String)>,
    /// A request rate: (calls, per milliseconds).
    pub request_rate: Option<(u32, u64)>,
    /// How long a request may wait for IQM's rate limit, in milliseconds.
    pub rate_limit_wait_ms: Option<u64>,
}

impl ReplicaConfig {
    pub fn new(iqm: &FakeIqm, redis_url: &str, steps: &str) -> Self {
        Self {
            base_url: iqm.base_url(),
            redis_url: redis_url.to_owned(),
            steps: steps.to_owned(),
            ..Self::default()
        }
    }

    /// The same replica with other steps.
    pub fn steps(&self, steps: &str) -> Self {
        Self {
            steps: steps.to_owned(),
            ..self.clone()
        }
    }
}

/// What a replica reported when it finished.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub logins: u64,
    pub refreshes: u64,
    pub adoptions: u64,
    pub shared_errors: u64,
    pub unreadable: u64,
    /// Answers of 200 served with a token of another account than the replica's.
    pub foreign: u64,
    /// 401s IQM answered to this replica (counted under the layer, replays included).
    pub unauthorized: u64,
    /// The replica's wall clock when it reported, in Unix milliseconds.
    pub wall_ms: u64,
    pub renewed_alone: u64,
    /// How often the replica logged that the shared session is unavailable.
    pub outage_warnings: usize,
    /// How many warnings the replica logged.
    pub warnings: usize,
    /// 429s the replica was answered (`stats().rate_limited`).
    pub rate_limited: u64,
    /// Requests that waited for IQM's rate limit (`stats().requests_paced`).
    pub paced: u64,
    /// Requests refused unsent (`stats().requests_refused`).
    pub refused: u64,
    /// How often the replica logged that it paces alone.
    pub pacing_alone_warnings: usize,
}

/// The path of libfaketime's library, if it is installed; on CI it must be.
pub fn libfaketime() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|path| path.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is required on CI (`apt-get install faketime`)"
        );
        eprintln!("skipping: libfaketime is not installed; `apt-get install faketime`");
    }
    found
}

/// A running replica process.
pub struct Replica {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Replica {
    pub fn spawn(config: &ReplicaConfig) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args(["replica_process", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1", "--quiet"])
            .env("FLEET_BASE_URL", &config.base_url)
            .env("FLEET_REDIS_URL", &config.redis_url)
            .env("FLEET_STEPS", &config.steps)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(namespace) = &config.namespace {
            command.env("FLEET_NAMESPACE", namespace);
        }
        if let Some(ttl) = config.lease_ttl_ms {
            command.env("FLEET_LEASE_TTL_MS", ttl.to_string());
        }
        if let Some((email, password)) = &config.user {
            command
                .env("FLEET_EMAIL", email)
                .env("FLEET_PASSWORD", password);
        }
        if let Some((id, secret)) = &config.client {
            command
                .env("FLEET_CLIENT_ID", id)
                .env("FLEET_CLIENT_SECRET", secret);
        }
        if !config.keys.is_empty() {
            let hex: Vec<String> = config
                .keys
                .iter()
                .map(|key| key.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            command.env("FLEET_KEYS", hex.join(","));
        }
        if let Some(path) = &config.token_store {
            command.env("FLEET_TOKEN_STORE", path);
        }
        if let Some(offset) = &config.wall_clock_offset {
            let library = libfaketime().expect("libfaketime");
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        command.envs(config.topology_env.iter().map(|(k, v)| (k, v)));
        if let Some((calls, per_ms)) = config.request_rate {
            command.env("FLEET_REQUEST_RATE", format!("{calls}/{per_ms}"));
        }
        if let Some(wait) = config.rate_limit_wait_ms {
            command.env("FLEET_RATE_LIMIT_WAIT_MS", wait.to_string());
        }
        let mut child = command.spawn().expect("replica process starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(line) = line.strip_prefix("FLEET ") {
                    let _ = sender.send(line.to_owned());
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Waits (at most 120 s) for the next report line.
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .expect("the replica reported in time")
    }

    /// Waits for the replica to reach a `wait` or `serve` step.
    pub fn wait_until_waiting(&self) {
        assert_eq!(self.next_line(), "waiting");
    }

    /// Lets the replica go on from a `wait` or `serve` step.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("replica reads");
        stdin.flush().expect("replica reads");
    }

    /// Waits for the replica's report and its exit.
    pub fn finish(mut self) -> Report {
        let line = self.next_line();
        let status = self.child.wait().expect("replica exits");
        let stderr = self.stderr.join().unwrap_or_default();
        assert!(status.success(), "replica failed: {status}\n{stderr}");
        let mut report = parse(&line);
        report.outage_warnings = stderr
            .matches("the shared IQM session is unavailable; waiting for it")
            .count();
        report.warnings = stderr.lines().filter(|l| l.contains(" WARN ")).count();
        report.pacing_alone_warnings = stderr
            .matches("pacing this replica's requests alone")
            .count();
        report
    }

    /// Kills the process (SIGKILL): no cleanup runs in it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Report {
    let mut report = Report::default();
    let fields = line
        .strip_prefix("result ")
        .unwrap_or_else(|| panic!("not a result: {line}"));
    for field in fields.split_whitespace() {
        let (name, value) = field.split_once('=').expect("name=value");
        let value = value.parse().expect("a number");
        match name {
            "ok" => report.ok = value,
            "failed" => report.failed = value,
            "logins" => report.logins = value,
            "refreshes" => report.refreshes = value,
            "adoptions" => report.adoptions = value,
            "shared_errors" => report.shared_errors = value,
            "unreadable" => report.unreadable = value,
            "foreign" => report.foreign = value,
            "unauthorized" => report.unauthorized = value,
            "wall_ms" => report.wall_ms = value,
            "alone" => report.renewed_alone = value,
            "rate_limited" => report.rate_limited = value,
            "paced" => report.paced = value,
            "refused" => report.refused = value,
            _ => {}
        }
    }
    report
}

/// Whether this process was started as a replica.
pub fn is_replica() -> bool {
    std::env::var_os("FLEET_STEPS").is_some()
}

/// Counts the 401s IQM answers, under the auth layer: the ones it replays included.
struct Unauthorized(Arc<AtomicU64>);

#[async_trait::async_trait]
impl Middleware for Unauthorized {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> iqm_auth::reqwest_middleware::Result<reqwest::Response> {
        let response = next.run(request, extensions).await?;
        if response.status() == 401 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(response)
    }
}

fn key_from_hex(hex: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a hex key");
    }
    key
}

/// The shared session's keys: the first seals, any opens.
fn with_keys(shared: RedisSessionBuilder, keys: &[[u8; 32]]) -> RedisSessionBuilder {
    match keys {
        [] => shared,
        [key] => shared.encryption_key(*key),
        _ => shared.encryption_keys(keys.iter().copied()),
    }
}

/// The replica's side: runs the steps of its `FLEET_*` variables.
pub fn run() {
    let var = |name: &str| std::env::var(name).ok();
    let (Some(base), Some(redis), Some(steps)) = (
        var("FLEET_BASE_URL"),
        var("FLEET_REDIS_URL"),
        var("FLEET_STEPS"),
    ) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Comma-separated URLs: a cluster's nodes, or sentinels watching FLEET_SENTINEL_MASTER.
    let mut shared = match (var("FLEET_CLUSTER_URLS"), var("FLEET_SENTINEL_URLS")) {
        (Some(urls), _) => RedisSession::cluster(urls.split(',')),
        (None, Some(urls)) => RedisSession::sentinel(
            urls.split(','),
            var("FLEET_SENTINEL_MASTER").expect("FLEET_SENTINEL_MASTER"),
        ),
        (None, None) => RedisSession::builder(redis),
    };
    if let Some(namespace) = var("FLEET_NAMESPACE") {
        shared = shared.namespace(namespace);
    }
    if let Some(ttl) = var("FLEET_LEASE_TTL_MS").and_then(|t| t.parse().ok()) {
        shared = shared.lease_ttl(Duration::from_millis(ttl));
    }
    let keys: Vec<[u8; 32]> = var("FLEET_KEYS")
        .map(|keys| keys.split(',').map(key_from_hex).collect())
        .unwrap_or_default();
    shared = with_keys(shared, &keys);
    let email = var("FLEET_EMAIL").unwrap_or_else(|| iqm_auth::testing::EMAIL.to_owned());
    let password = var("FLEET_PASSWORD").unwrap_or_else(|| iqm_auth::testing::PASSWORD.to_owned());
    let client_id =
        var("FLEET_CLIENT_ID").unwrap_or_else(|| iqm_auth::testing::CLIENT_ID.to_owned());
    let client_secret =
        var("FLEET_CLIENT_SECRET").unwrap_or_else(|| iqm_auth::testing::CLIENT_SECRET.to_owned());
    let mut builder = IqmAuth::builder()
        .base_url(&base)
        .client_credentials(&client_id, client_secret)
        .workspace_host(iqm_auth::testing::WORKSPACE_HOST)
        .credentials(&email, password)
        .shared_session(shared.build().expect("redis session"));
    if let Some(path) = var("FLEET_TOKEN_STORE") {
        builder = builder.token_store(Arc::new(iqm_auth::FileTokenStore::new(path)));
    }
    if let Some(rate) = var("FLEET_REQUEST_RATE") {
        let (calls, per_ms) = rate.split_once('/').expect("CALLS/MS");
        builder = builder.request_rate_per(
            calls.parse().expect("calls"),
            Duration::from_millis(per_ms.parse().expect("ms")),
        );
    }
    if let Some(wait) = var("FLEET_RATE_LIMIT_WAIT_MS") {
        builder = builder.rate_limit_wait(Duration::from_millis(wait.parse().expect("ms")));
    }
    let auth = builder.build().expect("layer");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let unauthorized = Arc::new(AtomicU64::new(0));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .with(Unauthorized(unauthorized.clone()))
        .build();
    let url = format!("{base}/api/v3/campaigns");
    let (mut ok, mut failed, mut foreign) = (0u64, 0u64, 0u64);
    // Each request: whether it was answered 200, and whether with another account's token.
    let mut count = |results: Vec<(bool, bool)>| {
        for (good, theirs) in results {
            if good {
                ok += 1;
            } else {
                failed += 1;
            }
            foreign += u64::from(theirs);
        }
    };
    let get = |n: usize| {
        runtime.block_on(join_all((0..n).map(|_| async {
            let Ok(response) = client.get(&url).send().await else {
                return (false, false);
            };
            if response.status() != 200 {
                return (false, false);
            }
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let data = &body["data"];
            (
                true,
                data["user"] != email.as_str() || data["clientId"] != client_id.as_str(),
            )
        })))
    };
    let (go_sender, go) = channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || go_sender.send(()).is_err() {
                return;
            }
        }
    });
    let ms = |text: &str| Duration::from_millis(text.parse().expect("ms"));
    for step in steps.split(',') {
        match step.split_once(':') {
            Some(("get", n)) => count(get(n.parse().expect("a count"))),
            Some(("for", duration)) => {
                let until = Instant::now() + ms(duration);
                while Instant::now() < until {
                    count(get(4));
                }
            }
            Some(("pace", every_for)) => {
                let (every, duration) = every_for.split_once(':').expect("pace:EVERY:MS");
                let (start, every) = (Instant::now(), ms(every));
                let mut next = start;
                while next < start + ms(duration) {
                    count(get(1));
                    next += every;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            Some(("serve", every)) => {
                println!("FLEET waiting");
                loop {
                    count(get(1));
                    match go.recv_timeout(ms(every)) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
            }
            _ if step == "wait" => {
                println!("FLEET waiting");
                let _ = go.recv();
            }
            _ if step == "logout" => runtime.block_on(auth.logout()).expect("logout"),
            _ => panic!("unknown step {step}"),
        }
    }
    let stats = auth.stats();
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    println!(
        "FLEET result ok={ok} failed={failed} logins={} refreshes={} adoptions={} shared_errors={} unreadable={} alone={} foreign={foreign} unauthorized={} wall_ms={wall_ms} rate_limited={} paced={} refused={}",
        stats.logins,
        stats.refreshes,
        stats.shared_adoptions,
        stats.shared_errors,
        stats.shared_unreadable,
        stats.renewed_alone,
        unauthorized.load(Ordering::Relaxed),
        stats.rate_limited,
        stats.requests_paced,
        stats.requests_refused,
    );
}
