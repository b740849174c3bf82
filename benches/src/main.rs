//! Weir's benchmarks. Each one starts the real `weir` binary (release
//! build), drives it over pgwire and prints one JSON object, also written to
//! `benches/results/`. Timings are measured here, never asserted in tests.
//!
//! `cargo run --release -p weir-benches -- load [--rows N] [--batch N] [--workers N]`
//! `cargo run --release -p weir-benches -- updates [--orders N] [--updates N] [--batch N] [--workers N]`
//! `cargo run --release -p weir-benches -- durable [--rows N] [--batch N] [--clients N] [--workers N]`
//! `cargo run --release -p weir-benches -- cdc [--rows N] [--stream-rows N] [--workers N]`
//! `cargo run --release -p weir-benches -- nexmark [--events N] [--queries q0,q1,..] [--workers 1,2] [--ceiling] [--flink]`

mod ceiling;
mod files;
mod flink;
mod nexmark;
mod pg;

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
    /// The state directory of a server started on a fresh one.
    _state: Option<tempfile::TempDir>,
}

impl Weir {
    /// A server on a fresh, temporary state directory.
    fn start(workers: usize) -> Result<Weir> {
        let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
        let mut weir = Weir::start_on(workers, dir.path())?;
        weir._state = Some(dir);
        Ok(weir)
    }

    /// A server on the state directory `state`.
    fn start_on(workers: usize, state: &std::path::Path) -> Result<Weir> {
        let exe = weir_binary()?;
        let mut child = Command::new(&exe)
            .args([
                "start",
                "--pg-addr",
                "127.0.0.1:0",
                "--workers",
                &workers.to_string(),
                "--state",
                state.to_str().context("utf-8 state path")?,
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
        Ok(Weir {
            child,
            url,
            _state: None,
        })
    }

    /// CPU time the server has used so far (user and system), in seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which may hold spaces) start at
        // state, field 3; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("stat")?.1;
        let field = |n: usize| -> Result<f64> {
            Ok(rest
                .split_whitespace()
                .nth(n - 3)
                .context("stat field")?
                .parse::<f64>()?)
        };
        // Clock ticks are 100 per second on Linux.
        Ok((field(14)? + field(15)?) / 100.0)
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

/// `benches/`: its queries, scripts and results. `WEIR_BENCH_DIR` names
/// another, for a binary run away from the tree it was built in.
fn bench_dir() -> PathBuf {
    std::env::var_os("WEIR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The release `weir` binary, built if needed; `WEIR_BIN` names a binary
/// to use as is.
fn weir_binary() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("WEIR_BIN") {
        return Ok(PathBuf::from(bin));
    }
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

/// The value after flag `name`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    flag(args, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `--workers N`, by default one per core.
fn workers(args: &[String]) -> usize {
    arg(
        args,
        "--workers",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    )
}

/// Load rows with COPY into a table a grouped view is defined over; report
/// rows/s until the view reflects every row, and the server's peak RSS.
async fn load(args: &[String]) -> Result<serde_json::Value> {
    let rows = arg(args, "--rows", 1_000_000);
    let batch = arg(args, "--batch", 10_000);
    let workers = workers(args);
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
    copy_chunks(&c, "COPY t FROM STDIN", chunks).await?;
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

/// Run `copy` (a `COPY ... FROM STDIN`) once per chunk: each chunk is one
/// statement, acknowledged before the next is sent.
async fn copy_chunks(c: &Client, copy: &str, chunks: Vec<bytes::Bytes>) -> Result<()> {
    for chunk in chunks {
        let sink = c.copy_in(copy).await?;
        futures::pin_mut!(sink);
        sink.send(chunk).await?;
        sink.finish().await?;
    }
    Ok(())
}

/// COPY `rows` (tab-separated lines) into `table`, 10,000 lines a time.
async fn copy_lines(c: &Client, table: &str, rows: impl Iterator<Item = String>) -> Result<()> {
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let mut chunk = String::new();
        for line in rows.by_ref().take(10_000) {
            chunk.push_str(&line);
            chunk.push('\n');
        }
        copy_chunks(
            c,
            &format!("COPY {table} FROM STDIN"),
            vec![bytes::Bytes::from(chunk)],
        )
        .await?;
    }
    Ok(())
}

/// Resident set size now, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// A profiler attached to the server over a measured interval:
/// `WEIR_BENCH_PROFILE` is a shell command run with `$PID` set to the
/// server's process id (e.g. `perf record -F 499 -p $PID -o q0.data`),
/// interrupted when the interval ends. Unset, nothing runs.
struct Profiler(Option<Child>);

impl Profiler {
    fn start(pid: u32) -> Result<Profiler> {
        let Ok(command) = std::env::var("WEIR_BENCH_PROFILE") else {
            return Ok(Profiler(None));
        };
        let child = Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .env("PID", pid.to_string())
            .spawn()
            .context("starting WEIR_BENCH_PROFILE")?;
        Ok(Profiler(Some(child)))
    }

    /// Interrupt the profiler (as Ctrl-C would) and wait for it to write.
    fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.0.take() {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// A small deterministic generator, so runs are repeatable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

const REGIONS: u64 = 10;
const CATEGORIES: u64 = 20;

/// A three-way join with a GROUP BY over orders / customers / products,
/// then random UPDATEs of orders by primary key in batches: updates/s,
/// commit-to-view latency per batch, and memory per arranged row.
async fn updates(args: &[String]) -> Result<serde_json::Value> {
    let orders = arg(args, "--orders", 1_000_000) as u64;
    let customers = arg(args, "--customers", 100_000) as u64;
    let products = arg(args, "--products", 1_000) as u64;
    let total_updates = arg(args, "--updates", 1_000_000);
    let batch = arg(args, "--batch", 1_000);
    let workers = workers(args);
    let weir = Weir::start(workers)?;
    let pid = weir.child.id();
    let c = weir.connect().await?;
    let baseline_rss = rss(pid)?;
    c.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, region text);
         CREATE TABLE products (id int PRIMARY KEY, category text, price bigint);
         CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, product_id int, qty int);
         CREATE MATERIALIZED VIEW sales AS
           SELECT c.region, p.category, count(*) AS n, sum(o.qty) AS units, sum(o.qty * p.price) AS revenue
           FROM orders o JOIN customers c ON o.customer_id = c.id JOIN products p ON o.product_id = p.id
           GROUP BY c.region, p.category",
    )
    .await?;
    // The model the view is checked against.
    let region = |c: u64| c % REGIONS;
    let price = |p: u64| 1 + p % 97;
    let category = |p: u64| p % CATEGORIES;
    let mut rng = Lcg(1);
    let mut order_state: Vec<(u64, u64, i64)> = (0..orders)
        .map(|_| (rng.next(customers), rng.next(products), 1 + rng.next(10) as i64))
        .collect();
    copy_lines(
        &c,
        "customers",
        (0..customers).map(|i| format!("{i}\tr{}", region(i))),
    )
    .await?;
    copy_lines(
        &c,
        "products",
        (0..products).map(|i| format!("{i}\tc{}\t{}", category(i), price(i))),
    )
    .await?;
    let load_started = Instant::now();
    copy_lines(
        &c,
        "orders",
        order_state
            .iter()
            .enumerate()
            .map(|(i, (cu, p, q))| format!("{i}\t{cu}\t{p}\t{q}")),
    )
    .await?;
    let n: i64 = c.query_one("SELECT sum(n)::bigint FROM sales", &[]).await?.get(0);
    if n as u64 != orders {
        bail!("view holds {n} orders after the load, expected {orders}");
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let loaded_rss = rss(pid)?;
    let arrangements = arrangement_sizes(&c).await?;

    // Updates: move orders between products and change quantities. By
    // default the next batch goes as soon as the last one commits, as a
    // feed would send it, and a second session reads the view after each
    // commit to time when the view reflects it (a read waits for every
    // write committed before it); `--serial` waits for the view before
    // sending the next batch.
    let serial = args.iter().any(|a| a == "--serial");
    // `--connections N` sends batches from N sessions at once (each
    // still waits for its own commit before sending its next).
    let connections = arg(args, "--connections", 1).max(1);
    let (commits, mut committed_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let reader = weir.connect().await?;
    let checker = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut waiting = Vec::new();
        while let Some(committed) = committed_rx.recv().await {
            // One read covers every commit made before it is sent (a read
            // waits for all of them), so commits that arrived meanwhile
            // share it rather than queue behind it.
            waiting.push(committed);
            while let Ok(more) = committed_rx.try_recv() {
                waiting.push(more);
            }
            reader.query_one("SELECT count(*) FROM sales", &[]).await?;
            latencies.extend(waiting.drain(..).map(|c| c.elapsed().as_secs_f64() * 1000.0));
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    // The batches, chosen up front so that several sessions can take them
    // in any order: every update increments, so the model's final state
    // does not depend on which commits first.
    let mut batches: std::collections::VecDeque<Vec<u64>> = Default::default();
    let mut done = 0;
    while done < total_updates {
        let size = batch.min(total_updates - done);
        let mut ids: Vec<u64> = (0..size).map(|_| rng.next(orders)).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            let o = &mut order_state[*id as usize];
            o.1 = (o.1 + 1) % products;
            o.2 += 1;
        }
        done += ids.len();
        batches.push_back(ids);
    }
    let batches = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let mut sessions = Vec::new();
    for _ in 0..connections {
        sessions.push(weir.connect().await?);
    }
    let started = Instant::now();
    let cpu_at_start = weir.cpu_seconds()?;
    let profiler = Profiler::start(weir.child.id())?;
    let mut senders = Vec::new();
    for c in sessions {
        let batches = batches.clone();
        let commits = commits.clone();
        senders.push(tokio::spawn(async move {
            let mut statements: Vec<f64> = Vec::new();
            loop {
                let Some(ids) = batches.lock().expect("batches lock").pop_front() else {
                    break;
                };
                let list = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
                let sent = Instant::now();
                c.batch_execute(&format!(
                    "UPDATE orders SET product_id = (product_id + 1) % {products}, qty = qty + 1 WHERE id IN ({list})"
                ))
                .await?;
                let committed = Instant::now();
                statements.push(committed.duration_since(sent).as_secs_f64() * 1000.0);
                commits.send(committed)?;
                if serial {
                    // Reads wait until the view reflects every committed write.
                    c.query_one("SELECT count(*) FROM sales", &[]).await?;
                }
            }
            Ok::<_, anyhow::Error>(statements)
        }));
    }
    let mut statements: Vec<f64> = Vec::new();
    for sender in senders {
        statements.extend(sender.await??);
    }
    drop(commits);
    // The last latency ends when the view has every update.
    let mut latencies = checker.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = weir.cpu_seconds()? - cpu_at_start;
    profiler.stop()?;
    let final_rss = rss(pid)?;
    let arrangements_after = arrangement_sizes(&c).await?;

    // Check the view against the model.
    let mut expected: std::collections::BTreeMap<(String, String), (i64, i64, i64)> = Default::default();
    for (cu, p, q) in &order_state {
        let e = expected
            .entry((format!("r{}", region(*cu)), format!("c{}", category(*p))))
            .or_default();
        e.0 += 1;
        e.1 += q;
        e.2 += q * price(*p) as i64;
    }
    let rows = c
        .query(
            "SELECT region, category, n, units::bigint, revenue::bigint FROM sales ORDER BY 1, 2",
            &[],
        )
        .await?;
    let got: std::collections::BTreeMap<(String, String), (i64, i64, i64)> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect();
    if got != expected {
        bail!("the view differs from the independent computation after the updates");
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    statements.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let statement_p50 = statements[(statements.len() - 1) / 2];
    // Input rows as Arrow holds them: orders 8+4+4+4 bytes, customers 4 +
    // ~2 text, products 4 + ~3 text + 8.
    let input_rows = orders + customers + products;
    let raw_bytes = orders * 20 + customers * 6 + products * 15;
    let memory = loaded_rss.saturating_sub(baseline_rss);
    Ok(json!({
        "benchmark": "updates",
        "mode": if serial { "serial" } else { "pipelined" },
        "connections": connections,
        "workers": workers,
        "orders": orders,
        "customers": customers,
        "products": products,
        "updates": done,
        "batch_rows": batch,
        "seconds_to_load_and_maintain": load_seconds,
        "seconds_for_updates": elapsed,
        "updates_per_second": done as f64 / elapsed,
        "weir_cpu_seconds_for_updates": cpu,
        "latency_ms_p50": pct(0.5),
        "update_statement_ms_p50": statement_p50,
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": pct(1.0),
        "memory_bytes_after_load": memory,
        "memory_bytes_per_input_row": memory as f64 / input_rows as f64,
        "raw_bytes_per_input_row": raw_bytes as f64 / input_rows as f64,
        "arranged_records_after_load": arrangements["records"],
        "arranged_bytes_per_record": arrangements["bytes_per_record"],
        "arranged_capacity_bytes_per_record": arrangements["capacity_bytes_per_record"],
        "arrangements_after_load": arrangements["arrangements"],
        "rss_bytes_after_updates": final_rss,
        "arranged_records_after_updates": arrangements_after["records"],
        "arrangements_after_updates": arrangements_after["arrangements"],
        "peak_rss_bytes": weir.peak_rss()?,
        "view_rows": got.len(),
    }))
}

/// What the server's arrangements hold (`weir_catalog.arrangement_sizes`,
/// summed over workers): per arrangement and in total, with bytes per
/// arranged record (an update: key, value, time, diff).
async fn arrangement_sizes(c: &Client) -> Result<serde_json::Value> {
    let rows = c
        .query(
            "SELECT coalesce(relation, ''), operator, sum(records)::bigint, sum(size_bytes)::bigint,
                    sum(capacity_bytes)::bigint
             FROM weir_catalog.arrangement_sizes GROUP BY 1, 2 ORDER BY 4 DESC",
            &[],
        )
        .await?;
    let (mut records, mut bytes, mut capacity) = (0i64, 0i64, 0i64);
    let mut each = Vec::new();
    for r in &rows {
        let (n, b, cap): (i64, i64, i64) = (r.get(2), r.get(3), r.get(4));
        records += n;
        bytes += b;
        capacity += cap;
        each.push(json!({
            "relation": r.get::<_, String>(0),
            "operator": r.get::<_, String>(1),
            "records": n,
            "size_bytes": b,
            "capacity_bytes": cap,
        }));
    }
    Ok(json!({
        "records": records,
        "bytes_per_record": bytes as f64 / records.max(1) as f64,
        "capacity_bytes_per_record": capacity as f64 / records.max(1) as f64,
        "arrangements": each,
    }))
}

/// Durable writes with the default local-directory state: COPY throughput
/// (every batch acknowledged only once durable), single-row INSERT commit
/// latency from concurrent clients, storage per live row once compacted,
/// and the time from `weir start` to serving the restored table through a
/// GROUP BY view.
async fn durable(args: &[String]) -> Result<serde_json::Value> {
    let rows = arg(args, "--rows", 1_000_000);
    let batch = arg(args, "--batch", 10_000);
    let clients = arg(args, "--clients", 16);
    let inserts = arg(args, "--inserts", 250);
    let workers = workers(args);
    let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
    let mut weir = Weir::start_on(workers, dir.path())?;
    let c = weir.connect().await?;
    c.batch_execute(
        "CREATE TABLE t (k bigint, v bigint, s text);
         CREATE MATERIALIZED VIEW m AS SELECT k % 1000 AS g, count(*), sum(v) FROM t GROUP BY 1;
         CREATE TABLE singles (client int, i int)",
    )
    .await?;
    let mut raw_bytes = 0usize;
    let chunks: Vec<bytes::Bytes> = (0..rows)
        .step_by(batch)
        .map(|start| {
            let mut s = String::with_capacity(batch * 24);
            for k in start..(start + batch).min(rows) {
                let text = format!("row-{k}");
                raw_bytes += 16 + text.len();
                s.push_str(&format!("{k}\t{}\t{text}\n", k * 7 % 1013));
            }
            bytes::Bytes::from(s)
        })
        .collect();
    let started = Instant::now();
    copy_chunks(&c, "COPY t FROM STDIN", chunks).await?;
    let write_seconds = started.elapsed().as_secs_f64();

    // Single-row INSERTs, each client one after another, all clients at once.
    let mut tasks = Vec::new();
    let load_started = Instant::now();
    for client in 0..clients {
        let cc = weir.connect().await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(inserts);
            for i in 0..inserts {
                let t = Instant::now();
                cc.batch_execute(&format!("INSERT INTO singles VALUES ({client}, {i})"))
                    .await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let single_seconds = load_started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let singles: i64 = c.query_one("SELECT count(*) FROM singles", &[]).await?.get(0);
    if singles as usize != clients * inserts {
        bail!(
            "{singles} single-row inserts stored, {} acknowledged",
            clients * inserts
        );
    }

    // Storage once background compaction has settled.
    let shard = dir.path().join("data");
    let mut settled = (0usize, 0u64);
    for _ in 0..100 {
        let now = dir_usage(&shard)?;
        if now == settled {
            break;
        }
        settled = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (objects, stored_bytes) = settled;
    let live_rows = rows + clients * inserts;
    drop(c);
    weir.child.kill()?;
    weir.child.wait()?;

    // Restart: from spawning the process to the view answering in full.
    let expected_sum: i64 = (0..rows as i64).map(|k| k * 7 % 1013).sum();
    let restart = Instant::now();
    let weir = Weir::start_on(workers, dir.path())?;
    let c = weir.connect().await?;
    loop {
        let row = c.query_one("SELECT sum(count), sum(sum) FROM m", &[]).await?;
        let n: Option<i64> = row.get(0);
        let s: Option<i64> = row.get(1);
        if n == Some(rows as i64) && s == Some(expected_sum) {
            break;
        }
        if restart.elapsed() > Duration::from_secs(300) {
            bail!("restored view incomplete: {n:?} rows");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart_seconds = restart.elapsed().as_secs_f64();
    Ok(json!({
        "benchmark": "durable",
        "state": "local directory",
        "rows": rows,
        "batch_rows": batch,
        "workers": workers,
        "durable_rows_per_second": rows as f64 / write_seconds,
        "seconds_to_write": write_seconds,
        "single_insert_clients": clients,
        "single_inserts": clients * inserts,
        "single_inserts_per_second": (clients * inserts) as f64 / single_seconds,
        "commit_latency_ms_p50": pct(0.5),
        "commit_latency_ms_p99": pct(0.99),
        "commit_latency_ms_max": pct(1.0),
        "live_rows": live_rows,
        "stored_objects": objects,
        "stored_bytes": stored_bytes,
        "stored_bytes_per_live_row": stored_bytes as f64 / live_rows as f64,
        "raw_bytes_per_row": raw_bytes as f64 / rows as f64,
        "seconds_from_start_to_serving_restored_view": restart_seconds,
        "restored_peak_rss_bytes": weir.peak_rss()?,
    }))
}

/// Poll `sql` (one bigint, NULL as 0) on `c` until it reaches `target`,
/// every 10 ms: each poll is a query the server parses, plans and answers
/// on the same two cores it is being measured on, so polling faster would
/// slow down what it measures (the error is at most 10 ms per figure).
async fn wait_for(c: &Client, sql: &str, target: i64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let v: Option<i64> = c.query_one(sql, &[]).await?.get(0);
        if v.unwrap_or(0) >= target {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{sql} reached {v:?}, not {target}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn source_sql(port: u16, publication: &str) -> String {
    format!(
        "CREATE SECRET IF NOT EXISTS pw AS 'unused';
         CREATE CONNECTION IF NOT EXISTS pg TO POSTGRES (HOST '127.0.0.1', PORT {port}, USER 'postgres',
            PASSWORD SECRET pw, DATABASE 'postgres', SSL MODE 'disable');
         CREATE SOURCE src FROM POSTGRES CONNECTION pg (PUBLICATION '{publication}') FOR ALL TABLES"
    )
}

/// A Weir on a fresh state directory with a source over `publication`
/// and then `view` created, once the source is streaming.
async fn streaming(
    workers: usize,
    port: u16,
    publication: &str,
    view: &str,
) -> Result<(Weir, Client, tempfile::TempDir)> {
    let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
    let weir = Weir::start_on(workers, dir.path())?;
    let c = weir.connect().await?;
    c.batch_execute(&source_sql(port, publication)).await?;
    c.batch_execute(view).await?;
    wait_for(
        &c,
        "SELECT count(*) FROM weir_catalog.sources WHERE state = 'streaming'",
        1,
        Duration::from_secs(60),
    )
    .await?;
    Ok((weir, c, dir))
}

/// PostgreSQL change data capture against a throwaway local server:
/// snapshot rows/s, streaming rows/s draining a backlog (and the same for
/// `pg_recvlogical` to /dev/null, the ceiling), and commit-to-view
/// freshness at 1,000 and 10,000 rows/s.
async fn cdc(args: &[String]) -> Result<serde_json::Value> {
    let rows = arg(args, "--rows", 1_000_000) as i64;
    let stream_rows = arg(args, "--stream-rows", 1_000_000) as i64;
    let workers = workers(args);
    let pg = pg::Postgres::start()?;
    let up = pg.connect().await?;
    up.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, name text, amount bigint, at timestamp, pad text);
         INSERT INTO t SELECT g, 'name-' || g, g * 7, '2024-01-01'::timestamp + g * interval '1 second',
            repeat('x', 40) FROM generate_series(1, {rows}) g;
         CREATE TABLE s (id bigint PRIMARY KEY, name text, amount bigint, at timestamp, pad text);
         CREATE TABLE f (id bigint PRIMARY KEY, v int);
         CREATE PUBLICATION snap FOR TABLE t;
         CREATE PUBLICATION stream FOR TABLE s;
         CREATE PUBLICATION fresh FOR TABLE f;
         CHECKPOINT;"
    ))
    .await?;
    let row_bytes: f64 = up
        .query_one("SELECT avg(pg_column_size(t.*))::float8 FROM t", &[])
        .await?
        .get(0);

    let phases = flag(args, "--phases").unwrap_or("snapshot,stream,freshness");
    let mut out = json!({
        "benchmark": "cdc",
        "upstream": "PostgreSQL 15, same machine",
        "workers": workers,
        "upstream_row_bytes": row_bytes,
    });

    // Snapshot: CREATE SOURCE until a count(*) view shows every row.
    if phases.contains("snapshot") {
        let weir = Weir::start(workers)?;
        let c = weir.connect().await?;
        let cpu = weir.cpu_seconds()?;
        let started = Instant::now();
        c.batch_execute(&source_sql(pg.port, "snap")).await?;
        c.batch_execute("CREATE MATERIALIZED VIEW nt AS SELECT count(*) AS n FROM t")
            .await?;
        wait_for(&c, "SELECT n FROM nt", rows, Duration::from_secs(600)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = weir.cpu_seconds()? - cpu;
        out["snapshot_rows"] = json!(rows);
        out["snapshot_seconds"] = json!(seconds);
        out["snapshot_rows_per_second"] = json!(rows as f64 / seconds);
        out["snapshot_weir_cpu_seconds"] = json!(cpu);
        out["snapshot_peak_rss_bytes"] = json!(weir.peak_rss()?);
    }

    // Streaming: a backlog of `stream_rows` inserts in transactions of 100
    // rows, written while the consumer is away, then drained.
    let load = |from: i64| {
        format!(
            "DO $$ BEGIN FOR b IN 0..{} LOOP
               INSERT INTO s SELECT g, 'name-' || g, g * 7, now()::timestamp, repeat('x', 40)
                 FROM generate_series({from} + b * 100 + 1, {from} + b * 100 + 100) g;
               COMMIT;
             END LOOP; END $$",
            stream_rows / 100 - 1
        )
    };
    if phases.contains("stream") {
        let (mut weir, c, dir) = streaming(
            workers,
            pg.port,
            "stream",
            "CREATE MATERIALIZED VIEW ns AS SELECT count(*) AS n FROM s",
        )
        .await?;
        drop(c);
        weir.child.kill()?;
        weir.child.wait()?;
        up.batch_execute(&load(0)).await?;
        let restarted = Instant::now();
        let weir = Weir::start_on(workers, dir.path())?;
        let c = weir.connect().await?;
        wait_for(&c, "SELECT n FROM ns", stream_rows, Duration::from_secs(600)).await?;
        let weir_seconds = restarted.elapsed().as_secs_f64();
        let cpu = weir.cpu_seconds()?;
        drop(c);
        drop(weir);

        // The ceiling: pg_recvlogical draining the same backlog to /dev/null.
        up.batch_execute("SELECT pg_create_logical_replication_slot('ceiling', 'pgoutput')")
            .await?;
        up.batch_execute(&load(stream_rows)).await?;
        let end: String = up
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let recv_started = Instant::now();
        let status = pg
            .recvlogical()
            .args([
                "--slot",
                "ceiling",
                "--start",
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=stream",
            ])
            .args(["--endpos", &end, "-f", "/dev/null"])
            .status()?;
        if !status.success() {
            bail!("pg_recvlogical failed: {status}");
        }
        let recv_seconds = recv_started.elapsed().as_secs_f64();
        up.batch_execute("SELECT pg_drop_replication_slot('ceiling')")
            .await?;
        out["stream_rows"] = json!(stream_rows);
        out["stream_seconds_including_restart"] = json!(weir_seconds);
        out["stream_rows_per_second"] = json!(stream_rows as f64 / weir_seconds);
        out["stream_weir_cpu_seconds_including_restart"] = json!(cpu);
        out["pg_recvlogical_seconds"] = json!(recv_seconds);
        out["pg_recvlogical_rows_per_second"] = json!(stream_rows as f64 / recv_seconds);
        out["stream_ratio_to_pg_recvlogical"] = json!(recv_seconds / weir_seconds);
    }
    if !phases.contains("freshness") {
        return Ok(out);
    }

    // Freshness: batches of inserts paced to a rate; the time from each
    // batch's COMMIT to a view showing it. The backlogs above are flushed
    // first, so the upstream's checkpoint does not land in this phase.
    up.batch_execute("CHECKPOINT").await?;
    let (_weir, c, _dir) = streaming(
        workers,
        pg.port,
        "fresh",
        "CREATE MATERIALIZED VIEW nf AS SELECT max(id) AS m FROM f",
    )
    .await?;
    let mut freshness = serde_json::Map::new();
    let mut next_id = 0i64;
    for rate in [1_000i64, 10_000] {
        // A loader commits one transaction of rate/100 rows every 10 ms for
        // 5 seconds, noting when each committed; meanwhile the view is
        // polled and each batch's first sighting noted.
        let per_batch = rate / 100;
        let loader_up = pg.connect().await?;
        let first_id = next_id;
        let loader = tokio::spawn(async move {
            let mut commits: Vec<(i64, Instant)> = Vec::new();
            let mut id = first_id;
            let run = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while run.elapsed() < Duration::from_secs(5) {
                tick.tick().await;
                let first = id + 1;
                id += per_batch;
                loader_up
                    .batch_execute(&format!(
                        "INSERT INTO f SELECT g, 0 FROM generate_series({first}, {id}) g"
                    ))
                    .await?;
                commits.push((id, Instant::now()));
            }
            Ok::<_, anyhow::Error>((commits, run.elapsed()))
        });
        let mut seen: Vec<(i64, Instant)> = Vec::new();
        while !loader.is_finished() {
            let m: Option<i64> = c.query_one("SELECT m FROM nf", &[]).await?.get(0);
            let m = m.unwrap_or(0);
            if seen.last().is_none_or(|(last, _)| m > *last) {
                seen.push((m, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (commits, elapsed) = loader.await??;
        next_id = commits.last().map(|(id, _)| *id).unwrap_or(next_id);
        wait_for(&c, "SELECT m FROM nf", next_id, Duration::from_secs(60)).await?;
        seen.push((next_id, Instant::now()));
        let mut latencies: Vec<f64> = commits
            .iter()
            .filter_map(|(id, at)| {
                let (_, when) = seen.iter().find(|(m, _)| m >= id)?;
                Some(when.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        freshness.insert(
            format!("{rate}_rows_per_second"),
            json!({
                "batches": commits.len(),
                "achieved_rows_per_second": (commits.len() as i64 * per_batch) as f64 / elapsed.as_secs_f64(),
                "freshness_ms_p50": pct(0.5),
                "freshness_ms_p99": pct(0.99),
                "freshness_ms_max": pct(1.0),
            }),
        );
    }
    out["freshness"] = json!(freshness);
    Ok(out)
}

/// Files and bytes under `dir`.
fn dir_usage(dir: &std::path::Path) -> Result<(usize, u64)> {
    let mut out = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let (n, b) = dir_usage(&entry.path())?;
            out.0 += n;
            out.1 += b;
        } else {
            out.0 += 1;
            out.1 += entry.metadata()?.len();
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("load");
    let runtime = tokio::runtime::Runtime::new()?;
    let result = match which {
        "load" => runtime.block_on(load(&args))?,
        "updates" => runtime.block_on(updates(&args))?,
        "durable" => runtime.block_on(durable(&args))?,
        "cdc" => runtime.block_on(cdc(&args))?,
        "nexmark" => runtime.block_on(nexmark::nexmark(&args))?,
        "files" => runtime.block_on(files::files(&args))?,
        other => bail!("unknown benchmark {other}; available: load, updates, durable, cdc, nexmark, files"),
    };
    let text = serde_json::to_string_pretty(&result)?;
    // Nexmark prints its own table as it goes.
    if which != "nexmark" {
        println!("{text}");
    }
    let dir = crate::bench_dir().join("results");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    std::fs::write(dir.join(format!("{which}-{stamp}.json")), text)?;
    Ok(())
}
