//! A replica as a process of its own: the test binary run again with `FLEET_*` variables. It
//! follows a list of steps and reports on standard output, in lines starting with `FLEET `.
//!
//! Steps (comma-separated): `get:N` sends N requests at once; `for:MS` sends requests back to
//! back (4 at a time) for MS milliseconds; `wait` reports `FLEET waiting` and waits for a line
//! on standard input; `logout` logs out. Last comes `FLEET result …`.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use futures::future::join_all;
use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::testing::FakeIqm;
use iqm_auth::{IqmAuth, RedisSession};

/// How a replica is set up, passed to its process as `FLEET_*` variables.
#[derive(Clone, Default)]
pub struct ReplicaConfig {
    pub base_url: String,
    pub redis_url: String,
    pub namespace: Option<String>,
    pub lease_ttl_ms: Option<u64>,
    pub steps: String,
    /// Where Redis is when it is not one server: `FLEET_CLUSTER_URLS` or
    /// `FLEET_SENTINEL_URLS` and `FLEET_SENTINEL_MASTER` (see `topologies.rs`).
    pub topology_env: Vec<(&'static str, String)>,
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
    /// How often the replica logged that the shared session is unavailable.
    pub outage_warnings: usize,
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
        command.envs(config.topology_env.iter().map(|(k, v)| (k, v)));
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

    /// Waits (at most 60 s) for the next report line.
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the replica reported in time")
    }

    /// Waits for the replica to reach a `wait` step.
    pub fn wait_until_waiting(&self) {
        assert_eq!(self.next_line(), "waiting");
    }

    /// Lets the replica go on from a `wait` step.
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
            .matches("this replica renews on its own until it is back")
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
            _ => {}
        }
    }
    report
}

/// Whether this process was started as a replica.
pub fn is_replica() -> bool {
    std::env::var_os("FLEET_STEPS").is_some()
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
    let auth = IqmAuth::builder()
        .base_url(&base)
        .client_credentials(
            iqm_auth::testing::CLIENT_ID,
            iqm_auth::testing::CLIENT_SECRET,
        )
        .workspace_host(iqm_auth::testing::WORKSPACE_HOST)
        .credentials(iqm_auth::testing::EMAIL, iqm_auth::testing::PASSWORD)
        .shared_session(shared.build().expect("redis session"))
        .build()
        .expect("layer");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    let url = format!("{base}/api/v3/campaigns");
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut count = |results: Vec<bool>| {
        for good in results {
            if good {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    };
    let get = |n: usize| {
        runtime.block_on(join_all((0..n).map(|_| async {
            matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
        })))
    };
    for step in steps.split(',') {
        match step.split_once(':') {
            Some(("get", n)) => count(get(n.parse().expect("a count"))),
            Some(("for", ms)) => {
                let until = Instant::now() + Duration::from_millis(ms.parse().expect("ms"));
                while Instant::now() < until {
                    count(get(4));
                }
            }
            _ if step == "wait" => {
                println!("FLEET waiting");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).expect("stdin");
            }
            _ if step == "logout" => runtime.block_on(auth.logout()).expect("logout"),
            _ => panic!("unknown step {step}"),
        }
    }
    let stats = auth.stats();
    println!(
        "FLEET result ok={ok} failed={failed} logins={} refreshes={} adoptions={} shared_errors={} unreadable={}",
        stats.logins,
        stats.refreshes,
        stats.shared_adoptions,
        stats.shared_errors,
        stats.shared_unreadable
    );
}
