//! Redis as production runs it, started for real on free loopback ports: a Redis Cluster of
//! three primaries, and a primary with a replica watched by Sentinel, failed over mid-run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iqm_auth::RedisSession;

use super::redis_server::{RedisServer, free_port};
use super::replica::ReplicaConfig;
use super::{fake, finish_all, go_all, layer, runtime, spawn_all, wait_all};

/// Polls `done` every 50 ms, for at most `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a reply names `port` (as `:port` in a cluster's or sentinel's listing, or as a
/// bulk string).
fn names_port(reply: &str, port: u16) -> bool {
    reply.contains(&format!("\r\n{port}\r\n")) || reply.contains(&format!(":{port}"))
}

/// Three primaries (`--cluster-enabled yes`) joined by `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("a directory for the nodes' files");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-port",
                &free_port().to_string(),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir.path().display().to_string(),
            ]
            .map(str::to_owned);
            nodes.push(RedisServer::start_program(
                "redis-server",
                &args,
                port,
                None,
            )?);
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match created {
            Ok(status) => assert!(status.success(), "redis-cli --cluster create: {status}"),
            Err(err) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "skipping: redis-cli could not be run ({err}); `apt-get install redis-tools`"
                );
                return None;
            }
            Err(err) => panic!("redis-cli is required on CI: {err}"),
        }
        let cluster = Self { nodes, _dir: dir };
        wait_until(
            "every node sees the cluster ok",
            Duration::from_secs(30),
            || {
                cluster.nodes.iter().all(|node| {
                    node.raw("CLUSTER INFO\r\n")
                        .is_ok_and(|info| info.contains("cluster_state:ok"))
                })
            },
        );
        Some(cluster)
    }

    fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// The nodes holding any of the session's keys.
    fn holding_keys(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let keys = self.nodes[i].raw("KEYS iqm-auth:*\r\n").expect("KEYS");
                !keys.starts_with("*0\r\n")
            })
            .collect()
    }
}

#[test]
fn on_a_three_primary_cluster_the_fleet_logs_in_once_and_a_401_storm_costs_one_renewal() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let rt = runtime();
    let iqm = fake(&rt);
    let mut config = ReplicaConfig::new(&iqm, &cluster.nodes[0].url(), "get:1,wait,get:4");
    config.namespace = Some("topologies".to_owned());
    config.topology_env = vec![("FLEET_CLUSTER_URLS", cluster.urls())];
    let mut replicas = spawn_all(vec![config.clone(); 6]);
    wait_all(&replicas);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));

    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    for report in &reports {
        assert_eq!(
            (report.ok, report.failed, report.shared_errors),
            (5, 0, 0),
            "{report:?}"
        );
    }
    assert_eq!(reports.iter().map(|r| r.adoptions).sum::<u64>(), 5 + 5);
    assert_eq!(
        (iqm.logins(), iqm.refreshes(), iqm.refresh_reuses()),
        (1, 1, 0)
    );
    // Every key of the session is on one primary: the one owning the hash tag's slot.
    let holding = cluster.holding_keys();
    assert_eq!(holding.len(), 1, "keys on nodes {holding:?}");

    // The same fleet given a node that does not own the slot as a single server: every script
    // is answered MOVED, and each replica renews on its own.
    let mut single = config;
    single.redis_url = cluster.nodes[(holding[0] + 1) % 3].url();
    single.topology_env.clear();
    single.steps = "get:2".to_owned();
    let reports = finish_all(spawn_all(vec![single; 3]));
    for report in &reports {
        assert_eq!(
            (report.ok, report.failed, report.logins),
            (2, 0, 1),
            "{report:?}"
        );
        assert!(report.shared_errors >= 1, "{report:?}");
    }
    assert_eq!(iqm.logins(), 1 + 3);
}

/// A primary, its replica and one sentinel watching them as `mymaster` (quorum 1), with a
/// failover declared 1 s after the primary stops answering.
struct Sentinels {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisServer,
    _dir: tempfile::TempDir,
}

const MASTER: &str = "mymaster";

impl Sentinels {
    fn start() -> Option<Self> {
        // The replica's first copy at once, not after the 5-s wait for more replicas.
        let eager = ["--repl-diskless-sync-delay", "0"].map(str::to_owned);
        let primary = RedisServer::start_program("redis-server", &eager, free_port(), None)?;
        // The sentinel's file, and the copy of the primary's data the replica loads from.
        let dir = tempfile::tempdir().expect("a directory for the sentinel and the replica");
        let replica_port = free_port();
        let follow = [
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
            "--dir",
            &dir.path().display().to_string(),
        ]
        .map(str::to_owned);
        let replica = RedisServer::start_program("redis-server", &follow, replica_port, None)?;
        let file = dir.path().join("sentinel.conf");
        let settings = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n",
            primary.port
        );
        std::fs::write(&file, settings).expect("sentinel.conf");
        let file = file.display().to_string();
        // Debian's `redis-sentinel` package, or the same binary as `redis-server --sentinel`.
        let packaged = Command::new("redis-sentinel")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        let sentinel = if packaged {
            RedisServer::start_program("redis-sentinel", &[file], free_port(), None)
        } else {
            let args = [file, "--sentinel".to_owned()];
            RedisServer::start_program("redis-server", &args, free_port(), None)
        }?;
        let sentinels = Self {
            primary,
            replica,
            sentinel,
            _dir: dir,
        };
        wait_until("the replica in sync", Duration::from_secs(20), || {
            let info = sentinels.replica.raw("INFO replication\r\n");
            info.is_ok_and(|info| info.contains("master_link_status:up"))
        });
        wait_until(
            "the sentinel knows the replica",
            Duration::from_secs(30),
            || {
                let replicas = sentinels
                    .sentinel
                    .raw(&format!("SENTINEL REPLICAS {MASTER}\r\n"));
                replicas.is_ok_and(|r| names_port(&r, replica_port) && !r.contains("s_down"))
            },
        );
        Some(sentinels)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    /// Waits until the replica holds the session's keys, as the primary does.
    fn wait_until_replicated(&self) {
        let keys = |server: &RedisServer| {
            let reply = server.raw("KEYS iqm-auth:*\r\n").expect("KEYS");
            let mut keys: Vec<String> = reply
                .lines()
                .filter(|line| line.starts_with("iqm-auth:"))
                .map(str::to_owned)
                .collect();
            keys.sort();
            keys
        };
        let on_primary = keys(&self.primary);
        assert!(!on_primary.is_empty());
        wait_until(
            "the session on the replica",
            Duration::from_secs(10),
            || keys(&self.replica) == on_primary,
        );
    }

    /// Waits until the sentinel names the replica as the primary and it answers as one.
    fn wait_for_failover(&self) {
        let port = self.replica.port;
        wait_until("the failover", Duration::from_secs(60), || {
            let named = self
                .sentinel
                .raw(&format!("SENTINEL GET-MASTER-ADDR-BY-NAME {MASTER}\r\n"))
                .is_ok_and(|reply| names_port(&reply, port));
            named
                && self
                    .replica
                    .raw("ROLE\r\n")
                    .is_ok_and(|role| role.contains("master"))
        });
    }
}

#[test]
fn behind_sentinel_the_fleet_follows_a_failover_without_presenting_a_spent_refresh_token() {
    let Some(mut sentinels) = Sentinels::start() else {
        return;
    };
    let rt = runtime();
    let iqm = fake(&rt);
    let mut config = ReplicaConfig::new(&iqm, "", "get:2,wait,get:3,wait,get:5");
    config.topology_env = vec![
        ("FLEET_SENTINEL_URLS", sentinels.url()),
        ("FLEET_SENTINEL_MASTER", MASTER.to_owned()),
    ];
    let mut replicas = spawn_all(vec![config; 6]);
    wait_all(&replicas);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));
    sentinels.wait_until_replicated();

    // The primary dies; the fleet keeps serving from its tokens while Sentinel fails over.
    sentinels.primary.stop();
    go_all(&mut replicas);
    wait_all(&replicas);
    sentinels.wait_for_failover();
    // Let the sentinel's announcement reach every replica's watcher (it is sent as the
    // failover completes; this only keeps the test from racing it).
    std::thread::sleep(Duration::from_millis(300));

    // Once the failover completed, a revocation costs one renewal, through the new primary.
    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);

    for report in &reports {
        assert_eq!(
            (report.ok, report.failed, report.shared_errors),
            (10, 0, 0),
            "{report:?}"
        );
    }
    assert_eq!(iqm.refresh_reuses(), 0, "no spent refresh token presented");
    assert_eq!(
        (iqm.logins(), iqm.refreshes()),
        (1, 1),
        "no extra login: the new primary had the session"
    );
}

#[test]
fn a_sentinel_that_never_answers_leaves_time_to_ask_the_next() {
    let Some(sentinels) = Sentinels::start() else {
        return;
    };
    // Accepts connections (the kernel does) and never answers: a sentinel on a lost host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let silent_url = format!("redis://{}", silent.local_addr().expect("an address"));
    let rt = runtime();
    let iqm = fake(&rt);
    let shared = || {
        RedisSession::sentinel([silent_url.clone(), sentinels.url()], MASTER)
            .build()
            .unwrap()
    };

    let first = layer(&iqm, shared());
    rt.block_on(first.access_token()).unwrap();
    let second = layer(&iqm, shared());
    rt.block_on(second.access_token()).unwrap();

    assert_eq!(first.stats().shared_errors, 0, "{:?}", first.stats());
    assert_eq!(second.stats().shared_errors, 0, "{:?}", second.stats());
    assert_eq!(second.stats().shared_adoptions, 1, "{:?}", second.stats());
    assert_eq!(iqm.logins(), 1);
}

#[test]
fn cluster_and_sentinel_urls_are_checked_without_showing_a_password() {
    let secret = "hunter2";
    let bad = [
        RedisSession::cluster(Vec::<String>::new())
            .build()
            .unwrap_err(),
        RedisSession::cluster([format!("redis://:{secret}@[::1")])
            .build()
            .unwrap_err(),
        RedisSession::cluster([
            format!("redis://:{secret}@127.0.0.1:7000"),
            "redis://:other@127.0.0.1:7001".to_owned(),
        ])
        .build()
        .unwrap_err(),
        RedisSession::sentinel(Vec::<String>::new(), MASTER)
            .build()
            .unwrap_err(),
        RedisSession::sentinel([format!("redis://:{secret}@[::1")], MASTER)
            .build()
            .unwrap_err(),
    ];
    for err in &bad {
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("Redis"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
    let cluster = RedisSession::cluster([format!("redis://:{secret}@127.0.0.1:7000")]);
    let sentinel = RedisSession::sentinel([format!("redis://:{secret}@127.0.0.1:26379")], MASTER);
    for shown in [
        format!("{cluster:?} {:?}", cluster.clone().build().unwrap()),
        format!("{sentinel:?} {:?}", sentinel.clone().build().unwrap()),
    ] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }
}
