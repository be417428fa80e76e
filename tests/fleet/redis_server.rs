//! A real `redis-server` on a free loopback port, one per test, stopped by its pid.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

/// A reply in the Redis protocol, binary-safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bulk(Some(bytes)) => Some(bytes),
            _ => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Self::Simple(text) | Self::Error(text) => text.clone(),
            Self::Integer(n) => n.to_string(),
            Self::Bulk(bytes) => {
                String::from_utf8_lossy(bytes.as_deref().unwrap_or_default()).into()
            }
            Self::Array(items) => format!("{items:?}"),
        }
    }

    pub fn items(&self) -> &[Resp] {
        match self {
            Self::Array(items) => items,
            _ => &[],
        }
    }
}

/// Hashes by name, each with its fields.
pub type Hashes = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Every key of the server with its remaining TTL and `DUMP` payload: what a snapshot holds.
#[derive(Debug, Clone)]
pub struct Snapshot(Vec<(Vec<u8>, i64, Vec<u8>)>);

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts a server, or `None` (with a message) when `redis-server` is not installed and
    /// this is not CI; on CI a missing server fails the test.
    pub fn start() -> Option<Self> {
        Self::start_with(free_port(), None)
    }

    /// Starts a server on `port`, requiring `password` if given.
    pub fn start_with(port: u16, password: Option<&str>) -> Option<Self> {
        let mut args = Vec::new();
        if let Some(password) = password {
            args = vec!["--requirepass".to_owned(), password.to_owned()];
        }
        Self::start_program("redis-server", &args, port, password)
    }

    /// Starts a server on `port` that loads `dir/dump.rdb` if there is one, and writes it on
    /// [`save`](Self::save) only.
    pub fn start_persistent(port: u16, dir: &std::path::Path) -> Option<Self> {
        let args = vec![
            "--dir".to_owned(),
            dir.to_string_lossy().into_owned(),
            "--dbfilename".to_owned(),
            "dump.rdb".to_owned(),
        ];
        Self::start_program("redis-server", &args, port, None)
    }

    /// Starts `program` (`redis-server` or `redis-sentinel`) on `port` with `args` after the
    /// usual loopback settings (a configuration file, if any, must come first: pass it as
    /// `args[0]` and it is put before them).
    pub fn start_program(
        program: &str,
        args: &[String],
        port: u16,
        password: Option<&str>,
    ) -> Option<Self> {
        let mut command = Command::new(program);
        let (file, args) = match args.first() {
            Some(first) if !first.starts_with("--") => (Some(first), &args[1..]),
            _ => (None, args),
        };
        command.args(file);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "skipping: {program} could not be started ({err}); install it with \
                     `apt-get install redis-server redis-sentinel`"
                );
                return None;
            }
            Err(err) => panic!("{program} is required on CI: {err}"),
        };
        let server = Self {
            child: Some(child),
            port,
            password: password.map(str::to_owned),
        };
        server.wait_until_ready();
        Some(server)
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(reply) = self.raw("PING\r\n") {
                if reply.starts_with('+') || reply.starts_with("-NOAUTH") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} never answered", self.port);
    }

    /// Sends an inline command and returns the reply's text.
    pub fn raw(&self, command: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        if let Some(password) = &self.password {
            stream.write_all(format!("AUTH {password}\r\n").as_bytes())?;
            let mut ok = [0u8; 5];
            stream.read_exact(&mut ok)?;
        }
        stream.write_all(command.as_bytes())?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 65536];
        loop {
            let n = stream.read(&mut buffer)?;
            reply.extend_from_slice(&buffer[..n]);
            if n == 0 || complete(&reply) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// Calls of every command the server has run, by name (`INFO commandstats`).
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info = self.raw("INFO commandstats\r\n").expect("INFO");
        info.lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }

    /// Sends one command, its arguments binary-safe, and reads its reply.
    pub fn command(&self, args: &[&[u8]]) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).expect("redis reads");
        read_reply(&mut std::io::BufReader::new(stream))
    }

    /// The names of every key whose name starts with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<Vec<u8>> {
        let pattern = format!("{prefix}*");
        let mut keys: Vec<Vec<u8>> = self
            .command(&[b"KEYS", pattern.as_bytes()])
            .items()
            .iter()
            .filter_map(|k| k.bytes().map(<[u8]>::to_vec))
            .collect();
        keys.sort();
        keys
    }

    /// The type of `key` (`string`, `hash`, `none`…).
    pub fn kind(&self, key: &[u8]) -> String {
        self.command(&[b"TYPE", key]).text()
    }

    /// Every hash under `iqm-auth:` with all its fields: what the shared sessions hold.
    pub fn hashes(&self) -> Hashes {
        self.keys("iqm-auth:")
            .into_iter()
            .filter(|key| self.kind(key) == "hash")
            .map(|key| {
                let fields = self.command(&[b"HGETALL", &key]);
                let pairs = fields
                    .items()
                    .chunks(2)
                    .map(|pair| {
                        let bytes = |r: &Resp| r.bytes().unwrap_or_default().to_vec();
                        (bytes(&pair[0]), bytes(&pair[1]))
                    })
                    .collect();
                (key, pairs)
            })
            .collect()
    }

    /// What the server holds now, as a snapshot (`DUMP` and `PTTL` of every key).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.keys("")
                .into_iter()
                .filter_map(|key| {
                    let ttl = match self.command(&[b"PTTL", &key]) {
                        Resp::Integer(ttl) if ttl > 0 => ttl,
                        _ => 0,
                    };
                    let dump = self.command(&[b"DUMP", &key]).bytes()?.to_vec();
                    Some((key, ttl, dump))
                })
                .collect(),
        )
    }

    /// Rolls the server back to `snapshot`: everything written since is lost, as when Redis
    /// restarts from an older RDB file or fails over to a replica that missed the last writes.
    pub fn roll_back_to(&self, snapshot: &Snapshot) {
        assert_eq!(self.command(&[b"FLUSHALL"]), Resp::Simple("OK".into()));
        for (key, ttl, dump) in &snapshot.0 {
            let ttl = ttl.to_string();
            let restored = self.command(&[b"RESTORE", key, ttl.as_bytes(), dump, b"REPLACE"]);
            assert_eq!(restored, Resp::Simple("OK".into()), "RESTORE");
        }
    }

    /// Writes the data set to `dump.rdb` in the server's directory.
    pub fn save(&self) {
        assert_eq!(self.command(&[b"SAVE"]), Resp::Simple("OK".into()));
    }

    /// Makes the server answer nothing for `seconds` (`DEBUG SLEEP`), from a thread of its own;
    /// returns once the server has started sleeping.
    pub fn stall(&self, seconds: f64) -> std::thread::JoinHandle<()> {
        let port = self.port;
        let sleeper = std::thread::spawn(move || {
            let _ = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                s.write_all(format!("DEBUG SLEEP {seconds}\r\n").as_bytes())?;
                let mut reply = [0u8; 5];
                s.read_exact(&mut reply)
            });
        });
        std::thread::sleep(Duration::from_millis(50));
        sleeper
    }

    /// Stops the server by its pid.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_reply(reader: &mut impl BufRead) -> Resp {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).expect("a reply");
    let text = String::from_utf8_lossy(&line[1..]).trim_end().to_owned();
    let number = || text.parse::<i64>().expect("a length");
    match line.first() {
        Some(b'+') => Resp::Simple(text),
        Some(b'-') => Resp::Error(text),
        Some(b':') => Resp::Integer(number()),
        Some(b'$') if number() < 0 => Resp::Bulk(None),
        Some(b'$') => {
            let mut bytes = vec![0; usize::try_from(number()).expect("a length") + 2];
            reader.read_exact(&mut bytes).expect("a bulk string");
            bytes.truncate(bytes.len() - 2);
            Resp::Bulk(Some(bytes))
        }
        Some(b'*') if number() < 0 => Resp::Array(Vec::new()),
        Some(b'*') => Resp::Array((0..number()).map(|_| read_reply(reader)).collect()),
        _ => panic!("not a reply: {line:?}"),
    }
}

/// Whether a reply (simple string, error, integer or bulk string) has fully arrived.
fn complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    match text.chars().next() {
        Some('$') => text
            .split_once("\r\n")
            .and_then(|(len, rest)| {
                let len: i64 = len[1..].parse().ok()?;
                Some(len < 0 || rest.len() as i64 >= len + 2)
            })
            .unwrap_or(false),
        Some(_) => text.ends_with("\r\n"),
        None => false,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
