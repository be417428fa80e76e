//! A real `redis-server` on a free loopback port, one per test, stopped by its pid.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

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

    /// Stops the server by its pid.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
