//! A throwaway PostgreSQL server for change-data-capture tests: `initdb`
//! into a temporary directory from the installed PostgreSQL binaries,
//! `wal_level = logical`, a free loopback port, stopped and removed on drop.
//! Tests never depend on a machine's running PostgreSQL service.

use std::path::PathBuf;
use std::process::Command;

use tokio_postgres::{Client, NoTls};

/// Where Debian installs the server binaries; `WEIR_PG_BIN` overrides it.
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("WEIR_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(name)
}

/// PostgreSQL refuses to run as root: run its tools as `postgres` then.
fn as_server_user(program: PathBuf, args: &[&str]) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The server options, to start it again the same way.
    opts: String,
}

impl Postgres {
    /// Start a fresh server with a `postgres` superuser (password
    /// `postgres`, SCRAM) and logical replication enabled.
    pub fn start() -> Postgres {
        Postgres::with_wal_level("logical")
    }

    /// Like [`Postgres::start`] with another `wal_level`.
    pub fn with_wal_level(wal_level: &str) -> Postgres {
        Postgres::configured(wal_level, false)
    }

    /// Like [`Postgres::start`], also accepting TLS with a certificate for
    /// `localhost` signed by a throwaway CA, whose PEM is returned.
    pub fn with_ssl() -> (Postgres, String) {
        let pg = Postgres::configured("logical", true);
        let ca = std::fs::read_to_string(pg.dir.path().join("ca.crt")).unwrap();
        (pg, ca)
    }

    fn configured(wal_level: &str, ssl: bool) -> Postgres {
        let dir = tempfile::Builder::new().prefix("weir-pg-").tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres", dir.path().to_str().unwrap()])
            .status();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "postgres\n").unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres", pwfile.to_str().unwrap()])
            .status();
        let out = as_server_user(
            bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
        )
        .output()
        .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level={wal_level} -c max_wal_senders=10 -c max_replication_slots=10 -c fsync=off",
            dir.path().display()
        );
        if ssl {
            certificates(dir.path());
            opts += &format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                dir.path().display()
            );
        }
        let pg = Postgres { dir, port, opts };
        pg.start_server();
        pg
    }

    fn start_server(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let out = as_server_user(
            bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &self.opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        )
        .output()
        .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/postgres", self.port)
    }

    /// A superuser session.
    pub async fn connect(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres", "postgres"), NoTls)
            .await
            .expect("connect to the throwaway PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let _ = as_server_user(
            bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", action],
        )
        .output();
    }

    /// Restart the server (same data, same port).
    pub fn restart(&self) {
        self.pg_ctl("stop");
        self.start_server();
    }
}

/// A CA and a server certificate for `localhost` (and 127.0.0.1) it signed,
/// made with the `openssl` command, readable by the server.
fn certificates(dir: &std::path::Path) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=weir-test-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext",
    ] {
        let out = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = dir.join("server.key");
    let _ = Command::new("chown")
        .args(["postgres:postgres", key.to_str().unwrap()])
        .status();
    let _ = Command::new("chmod")
        .args(["600", key.to_str().unwrap()])
        .status();
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_server_user(
            bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"],
        )
        .output();
    }
}
