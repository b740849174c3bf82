//! The Flink peer: the same Nexmark events written as CSV files, and
//! `benches/flink/nexmark.py` (PyFlink) run over them, one query after
//! another, never beside Weir. Each query's figure is its job's wall time
//! minus the same job's over empty files (start-up and shutdown of the
//! local cluster), so a fixed cost is not counted against Flink.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use nexmark::event::Event;

/// The Python with PyFlink installed: `FLINK_PYTHON`, or the venv the
/// README's install command makes.
fn python() -> PathBuf {
    std::env::var("FLINK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/flink-venv/bin/python")
        })
}

/// `ms` since the epoch as `yyyy-MM-dd HH:mm:ss.SSS` (UTC), the text
/// Flink's CSV format reads as TIMESTAMP(3).
fn timestamp(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// Write `events` under `dir` as person/, auction/ and bid/ CSV files,
/// `files` per table (so Flink reads them in parallel).
pub fn write_csv(events: &[Event], dir: &Path, files: usize) -> Result<()> {
    let files = files.max(1);
    let mut writers = Vec::new();
    for table in ["person", "auction", "bid"] {
        std::fs::create_dir_all(dir.join(table))?;
        let mut per = Vec::new();
        for i in 0..files {
            per.push(BufWriter::new(std::fs::File::create(
                dir.join(table).join(format!("part-{i}.csv")),
            )?));
        }
        writers.push(per);
    }
    for (n, event) in events.iter().enumerate() {
        let i = n % files;
        match event {
            Event::Person(p) => writeln!(
                writers[0][i],
                "{},{},{},{},{},{},{},{}",
                p.id,
                p.name,
                p.email_address,
                p.credit_card,
                p.city,
                p.state,
                timestamp(p.date_time),
                p.extra
            )?,
            Event::Auction(a) => writeln!(
                writers[1][i],
                "{},{},{},{},{},{},{},{},{},{}",
                a.id,
                a.item_name,
                a.description,
                a.initial_bid,
                a.reserve,
                timestamp(a.date_time),
                timestamp(a.expires),
                a.seller,
                a.category,
                a.extra
            )?,
            Event::Bid(b) => writeln!(
                writers[2][i],
                "{},{},{},{},{},{},{}",
                b.auction,
                b.bidder,
                b.price,
                b.channel,
                b.url,
                timestamp(b.date_time),
                b.extra
            )?,
        }
    }
    for w in writers.iter_mut().flatten() {
        w.flush()?;
    }
    Ok(())
}

/// Run `queries` on Flink with `parallelism`; per query, the seconds its
/// events took (or why there is no figure).
pub fn run(
    dir: &Path,
    empty: &Path,
    queries: &[String],
    parallelism: usize,
) -> Result<Vec<serde_json::Value>> {
    let script = crate::bench_dir().join("flink/nexmark.py");
    let python = python();
    if !python.exists() {
        bail!(
            "no PyFlink at {} (install: python3 -m venv ~/.cache/flink-venv && ~/.cache/flink-venv/bin/pip install apache-flink==2.3.0, or set FLINK_PYTHON)",
            python.display()
        );
    }
    let out = Command::new(&python)
        .arg(&script)
        .args(["--dir", dir.to_str().context("utf-8 dir")?])
        .args(["--empty-dir", empty.to_str().context("utf-8 dir")?])
        .args(["--queries", &queries.join(",")])
        .args(["--parallelism", &parallelism.to_string()])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("flink failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_read_as_flink_writes_them() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::timestamp(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(super::timestamp(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
