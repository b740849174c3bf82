//! The file source's ingest rate: CSV, newline-delimited JSON and Parquet
//! files of ~100-byte rows, each format on a fresh server, rows/s from
//! `CREATE SOURCE` until a `count(*)` view shows every row. Writing the
//! files is not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::{Weir, arg, wait_for, workers};

/// Rows `from..to`: id, name, amount, at, pad (40 characters).
fn rows(from: i64, to: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("pad", DataType::Utf8, false),
    ]));
    let ids = from..to;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| format!("name-{i}")),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.clone().map(|i| i as f64 * 0.25),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                ids.clone().map(|i| 1_704_067_200_000_000 + i * 1_000_000),
            )),
            Arc::new(StringArray::from_iter_values(ids.map(|_| "x".repeat(40)))),
        ],
    )
    .expect("a well-formed batch")
}

/// Write `total` rows as `files` files of `format` into `dir`.
fn write(dir: &std::path::Path, format: &str, total: i64, files: i64) -> Result<u64> {
    let per = total / files;
    let mut bytes = 0;
    for f in 0..files {
        let batch = rows(f * per, (f + 1) * per);
        let path = dir.join(format!("part-{f:04}.{format}"));
        let file = std::fs::File::create(&path)?;
        match format {
            "csv" => {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(file);
                w.write(&batch)?;
            }
            "json" => {
                let mut w = arrow::json::LineDelimitedWriter::new(file);
                w.write(&batch)?;
                w.finish()?;
            }
            _ => {
                let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
                w.write(&batch)?;
                w.close()?;
            }
        }
        bytes += std::fs::metadata(&path)?.len();
    }
    Ok(bytes)
}

pub async fn files(args: &[String]) -> Result<serde_json::Value> {
    let total = arg(args, "--rows", 2_000_000) as i64;
    let files = arg(args, "--files", 20) as i64;
    let workers = workers(args);
    let mut results = serde_json::Map::new();
    // The first server a run starts is markedly slower than the rest (see
    // the Nexmark warm-up): CSV runs once untimed first.
    for (format, timed) in [("csv", false), ("csv", true), ("json", true), ("parquet", true)] {
        let dir = tempfile::Builder::new().prefix("weir-files-").tempdir()?;
        let bytes = write(dir.path(), format, total, files)?;
        let weir = Weir::start(workers)?;
        let c = weir.connect().await?;
        let options = if format == "csv" {
            "(FORMAT CSV, HEADER)"
        } else {
            ""
        };
        let started = Instant::now();
        c.batch_execute(&format!(
            "CREATE SOURCE f FROM FILES 'file://{}/*.{format}' {options};
             CREATE MATERIALIZED VIEW n AS SELECT count(*) AS n FROM f",
            dir.path().display()
        ))
        .await?;
        wait_for(&c, "SELECT n FROM n", total, Duration::from_secs(1200)).await?;
        let seconds = started.elapsed().as_secs_f64();
        let rss = weir.peak_rss()?;
        let rate = total as f64 / seconds;
        if !timed {
            println!("warm-up (not counted): {format} at {rate:.0} rows/s");
            continue;
        }
        println!(
            "{format:>8}: {total} rows ({:.0} MB in {files} files) in {seconds:.2} s: {rate:.0} rows/s, peak RSS {:.2} GB",
            bytes as f64 / 1e6,
            rss as f64 / 1e9
        );
        results.insert(
            format.to_string(),
            serde_json::json!({
                "rows": total,
                "files": files,
                "bytes": bytes,
                "seconds": seconds,
                "rows_per_second": rate,
                "peak_rss_bytes": rss,
            }),
        );
    }
    Ok(serde_json::json!({ "benchmark": "files", "workers": workers, "formats": results }))
}
