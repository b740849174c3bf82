//! A throwaway PostgreSQL server for the CDC benchmark (initdb into a
//! temporary directory, `wal_level = logical`, a free port), the same way
//! the tests start theirs.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("WEIR_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(name)
}

fn as_server_user(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let dir = tempfile::Builder::new().prefix("weir-bench-pg-").tempdir()?;
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres", dir.path().to_str().context("path")?])
            .status();
        let data = dir.path().join("data");
        let out = as_server_user(bin("initdb"))
            .args([
                "-D",
                data.to_str().context("path")?,
                "-U",
                "postgres",
                "--auth",
                "trust",
            ])
            .args(["-E", "UTF8", "--locale", "C"])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 -c shared_buffers=256MB -c max_wal_size=4GB",
            dir.path().display()
        );
        let log = dir.path().join("log");
        let out = as_server_user(bin("pg_ctl"))
            .args(["-D", data.to_str().context("path")?, "-o", &opts])
            .args(["-l", log.to_str().context("path")?, "-w", "start"])
            .output()?;
        if !out.status.success() {
            bail!("pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Postgres { dir, port })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// `pg_recvlogical` from this server, as the ceiling to compare with.
    pub fn recvlogical(&self) -> Command {
        let mut c = Command::new(bin("pg_recvlogical"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
        c
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_server_user(bin("pg_ctl"))
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
