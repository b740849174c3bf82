//! Test harness: runs the real `weir` binary on a free port and connects
//! real clients to it.

#![allow(dead_code)]

pub mod pg;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A `weir start` process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// The state directory this server owns, removed on drop (`None` when
    /// the test passed its own state location).
    _state: Option<tempfile::TempDir>,
}

/// The binary under test. WEIR_BIN runs another build (say, release for
/// the conformance corpus).
pub fn weir_bin() -> String {
    std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").to_string())
}

/// A fresh, empty state directory.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("weir-state-")
        .tempdir()
        .expect("temp state dir")
}

impl Server {
    pub fn start() -> Server {
        Server::with_workers(2)
    }

    /// A server on a fresh state directory of its own.
    pub fn with_workers(workers: usize) -> Server {
        let dir = state_dir();
        let mut server = Server::on_state(dir.path().to_str().expect("utf-8 path"), workers, &[]);
        server._state = Some(dir);
        server
    }

    /// A server on the state at `state` (a path or URL the test owns),
    /// with extra environment variables.
    pub fn on_state(state: &str, workers: usize, env: &[(&str, &str)]) -> Server {
        Server::try_on_state(state, workers, env).unwrap_or_else(|e| panic!("weir did not start: {e}"))
    }

    /// Like [`Server::on_state`], but a server that exits before it is
    /// ready is an `Err` with what it printed to stderr.
    pub fn try_on_state(state: &str, workers: usize, env: &[(&str, &str)]) -> Result<Server, String> {
        // Port 0: the server picks a free port and prints it, so parallel
        // tests never race for one.
        let mut child = Command::new(weir_bin())
            .args([
                "start",
                "--pg-addr",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
                "--state",
                state,
            ])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("@127.0.0.1:").nth(1) {
                    let port: u16 = rest
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("port in ready line");
                    let _ = tx.send(port);
                }
            }
        });
        // Pass stderr through (it is the server's log) and keep it for an
        // early exit's report.
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = err_tx.send(seen);
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(port) = rx.recv_timeout(Duration::from_millis(20)) {
                return Ok(Server {
                    child,
                    port,
                    _state: None,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                return Err(format!("{status}: {stderr}"));
            }
            assert!(std::time::Instant::now() < deadline, "weir did not report ready");
        }
    }

    /// Kill the process with SIGKILL, as a crash would, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, once the process has exited on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("postgres://weir@127.0.0.1:{}/weir", self.port)
    }

    pub async fn connect(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Connect, returning the task that owns the socket: aborting it is a
    /// client vanishing without a goodbye.
    pub async fn connect_raw(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("connect");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        (client, task)
    }

    /// Send SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "weir did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a client program that prints `ok` when it is satisfied.
pub fn run_client(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
}

/// Run `sql` with the simple protocol and return its rows as text.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{sql}: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or(e.to_string())
            )
        })
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

/// Rows as sorted strings, for order-insensitive comparison.
pub async fn sorted(client: &Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = rows(client, sql)
        .await
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| c.unwrap_or_else(|| "NULL".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

/// A materialized view's rows and DataFusion's one-shot answer to the SQL
/// that defines it, both sorted: they must be equal.
pub async fn view_and_batch(client: &Client, view: &str, sql: &str) -> (Vec<String>, Vec<String>) {
    (
        sorted(client, &format!("SELECT * FROM {view}")).await,
        sorted(client, sql).await,
    )
}

/// Run `sql`, which must fail, and return (SQLSTATE, message, position).
pub async fn error(client: &Client, sql: &str) -> (String, String, Option<u32>) {
    let err = client
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("expected {sql} to fail"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a database error: {err}"));
    let position = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
        _ => None,
    };
    (db.code().code().to_string(), db.message().to_string(), position)
}

pub async fn exec(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| {
        panic!(
            "{sql}: {}",
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        )
    });
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto S3 server (a real S3 HTTP API) on a free loopback port with one
/// empty bucket, killed on drop. `scripts/test` installs `moto[server]`
/// from PyPI when it is missing.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start(bucket: &str) -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let moto = Moto { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Create the bucket once the server answers.
        loop {
            match moto.try_put(bucket, b"") {
                Ok(()) => return moto,
                Err(e) => assert!(std::time::Instant::now() < deadline, "moto did not start: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PUT `body` at `path` (`bucket` creates a bucket, `bucket/key` an
    /// object) with a plain HTTP request.
    pub fn put(&self, path: &str, body: &[u8]) {
        self.try_put(path, body).unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_put(&self, path: &str, body: &[u8]) -> Result<(), String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        let head = format!(
            "PUT /{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        s.write_all(body).map_err(|e| e.to_string())?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        if resp.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("PUT /{path}: {resp}"))
        }
    }

    /// The environment a server needs to reach this S3.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until source `name`'s state satisfies `ok`; returns it.
pub async fn wait_state(c: &Client, name: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = sorted(
            c,
            &format!("SELECT state FROM weir_catalog.sources WHERE name = '{name}'"),
        )
        .await;
        if let [state] = got.as_slice()
            && ok(state)
        {
            return state.clone();
        }
        assert!(std::time::Instant::now() < deadline, "source {name} is {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
