//! Weir's benchmarks. Each one starts the real `weir` binary (release
//! build), drives it over pgwire and prints one JSON object, also written to
//! `benches/results/`. Timings are measured here, never asserted in tests.
//!
//! `cargo run --release -p weir-benches -- load [--rows N] [--batch N] [--workers N]`

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::SinkExt;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

struct Weir {
    child: Child,
    url: String,
}

impl Weir {
    fn start(workers: usize) -> Result<Weir> {
        let exe = weir_binary()?;
        let mut child = Command::new(&exe)
            .args([
                "start",
                "--pg-addr",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split("psql ")
            .nth(1)
            .context("ready line")?
            .trim()
            .to_string();
        Ok(Weir { child, url })
    }

    /// Peak resident set size of the server, in bytes.
    fn peak_rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .context("VmHWM")?;
        Ok(kb * 1024)
    }

    async fn connect(&self) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release `weir` binary, built if needed.
fn weir_binary() -> Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "weir"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release --bin weir failed");
    }
    let dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    Ok(dir.join("weir"))
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Load rows with COPY into a table a grouped view is defined over; report
/// rows/s until the view reflects every row, and the server's peak RSS.
async fn load(args: &[String]) -> Result<serde_json::Value> {
    let rows = arg(args, "--rows", 1_000_000);
    let batch = arg(args, "--batch", 10_000);
    let workers = arg(
        args,
        "--workers",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    );
    let weir = Weir::start(workers)?;
    let c = weir.connect().await?;
    c.batch_execute("CREATE TABLE t (k bigint, v bigint)").await?;
    c.batch_execute("CREATE MATERIALIZED VIEW m AS SELECT k % 1000 AS g, count(*), sum(v) FROM t GROUP BY 1")
        .await?;
    // Generate the data before the clock starts.
    let chunks: Vec<bytes::Bytes> = (0..rows)
        .step_by(batch)
        .map(|start| {
            let mut s = String::with_capacity(batch * 16);
            for k in start..(start + batch).min(rows) {
                s.push_str(&format!("{k}\t{}\n", k * 7 % 1013));
            }
            bytes::Bytes::from(s)
        })
        .collect();
    let started = Instant::now();
    for chunk in chunks {
        let sink = c.copy_in("COPY t FROM STDIN").await?;
        futures::pin_mut!(sink);
        sink.send(chunk).await?;
        sink.finish().await?;
    }
    let loaded = started.elapsed();
    let (groups, total) = loop {
        let row = c.query_one("SELECT count(*), sum(count) FROM m", &[]).await?;
        let groups: i64 = row.get(0);
        let sum: i64 = row.get::<_, Option<i64>>(1).unwrap_or(0);
        if sum as usize == rows {
            break (groups, sum);
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("view did not catch up: {sum} of {rows}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed();
    let expected_sum: i64 = (0..rows as i64).map(|k| k * 7 % 1013).sum();
    let view_sum: i64 = c.query_one("SELECT sum(sum) FROM m", &[]).await?.get(0);
    if view_sum != expected_sum || groups != 1000.min(rows as i64) {
        bail!("wrong answer: sum {view_sum} (expected {expected_sum}), {groups} groups");
    }
    Ok(json!({
        "benchmark": "load",
        "rows": rows,
        "batch_rows": batch,
        "workers": workers,
        "seconds_to_load": loaded.as_secs_f64(),
        "seconds_until_view_complete": elapsed.as_secs_f64(),
        "rows_per_second": rows as f64 / elapsed.as_secs_f64(),
        "peak_rss_bytes": weir.peak_rss()?,
        "view_rows": groups,
        "view_count_total": total,
    }))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("load");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = match which {
        "load" => runtime.block_on(load(&args))?,
        other => bail!("unknown benchmark {other}; available: load"),
    };
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    std::fs::write(dir.join(format!("{which}-{stamp}.json")), text)?;
    Ok(())
}
