//! Running a file source: every file its pattern matches is decoded into
//! its table, once (or, with `WATCH`, as new files appear).
//!
//! Exactly once across restarts: the source's progress table
//! (`<source>_progress`: file, rows ingested, complete) is written in the
//! same durable step as the rows it counts, so after a restart each file
//! resumes after the rows it had, and a complete file is never read again.
//! Files are assumed not to change once written (write, then rename into
//! place). A file that cannot be decoded has its rows up to the bad one
//! ingested and the source in an error state naming the file and line; it
//! is tried again on each `WATCH` poll and at restart, from that row, so
//! fixing the file resumes it. A once-only source records its finished
//! pass as its position, so a restart does not pick up later files.
//!
//! This module lists, paces and hands batches to the committer; the
//! connector decodes, the committer owns durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use tracing::{info, warn};
use weir_connectors::files::{FileError, FileReader, Files, Format, Rule};
use weir_protocol::TableUpdate;
use weir_sql::GlobalId;

use crate::durable::Durable;
use crate::ingest::{Source, SourceKind, Status, Steps, set};

/// Rows per durable step.
const CHUNK: usize = 100_000;

/// How often a watching source lists its files again.
const POLL: Duration = Duration::from_secs(1);

/// The progress table's columns.
pub(crate) const PROGRESS_COLUMNS: &str =
    "file text NOT NULL, rows_ingested bigint NOT NULL, complete boolean NOT NULL";

/// What a file source reads.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub url: String,
    pub format: Format,
    pub watch: bool,
}

/// Rows ingested from a file, and whether it is complete.
type Progress = HashMap<String, (u64, bool)>;

/// The progress table's rows (as COPY text lines, from a restart) as a
/// map.
pub(crate) fn progress_from_lines(lines: &[String]) -> Progress {
    lines
        .iter()
        .filter_map(|l| {
            let f = weir_connectors::copy::text_fields(l);
            let file = f.first()?.clone()?;
            let rows = f.get(1)?.as_deref()?.parse().ok()?;
            let complete = f.get(2)?.as_deref()? == "t";
            Some((file, (rows, complete)))
        })
        .collect()
}

/// Start reading `spec` into `table`, recording progress in `progress`.
/// `done` is what the progress table holds; `finished`: a once-only
/// source already made its pass.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    id: GlobalId,
    name: String,
    spec: FileSpec,
    table: (GlobalId, SchemaRef, Vec<Rule>),
    progress: (GlobalId, SchemaRef),
    done: Progress,
    finished: bool,
    durable: Durable,
    status: Arc<Mutex<Status>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if finished && !spec.watch {
            set(&status, |s| s.state = "finished".into());
            return;
        }
        if let Err(e) = run(id, &spec, &table, &progress, done, &durable, &status).await {
            warn!(source = name, error = %e, "file source stopped");
            set(&status, |s| s.state = format!("error: {e}"));
        }
    })
}

async fn run(
    id: GlobalId,
    spec: &FileSpec,
    table: &(GlobalId, SchemaRef, Vec<Rule>),
    progress_table: &(GlobalId, SchemaRef),
    mut progress: Progress,
    durable: &Durable,
    status: &Mutex<Status>,
) -> Result<(), String> {
    let files = Files::open(&spec.url).map_err(|e| e.to_string())?;
    // Files that failed on their last try, and why.
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let listed = match files.list().await {
            Ok(l) => l,
            Err(e) if spec.watch => {
                warn!(url = spec.url, error = %e, "listing files failed; retrying");
                set(status, |s| s.state = format!("error: listing {}: {e}", spec.url));
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(format!("listing {}: {e}", spec.url)),
        };
        // A file that failed and is gone since is no longer an error.
        failed.retain(|url, _| listed.iter().any(|f| &f.url == url));
        for file in listed {
            let (before, complete) = progress.get(&file.url).copied().unwrap_or((0, false));
            if complete {
                continue;
            }
            set(status, |s| s.state = format!("reading {}", file.url));
            let reader = files
                .reader(&file, &spec.format, table.1.clone(), table.2.clone(), before)
                .await;
            let (rows, error) = match reader {
                Ok(reader) => {
                    read_file(
                        reader,
                        &file.url,
                        table.0,
                        progress_table,
                        &mut progress,
                        durable,
                        status,
                    )
                    .await?
                }
                Err(e) => (0, Some(error_text(&file.url, e))),
            };
            match error {
                Some(e) => {
                    warn!(file = file.url, error = e, "malformed file");
                    failed.insert(file.url.clone(), e);
                }
                None => {
                    info!(file = file.url, rows = before + rows, "file ingested");
                    failed.remove(&file.url);
                }
            }
        }
        let state = match failed.values().next() {
            Some(first) if failed.len() > 1 => {
                format!("error: {first} (and {} more files)", failed.len() - 1)
            }
            Some(first) => format!("error: {first}"),
            None if spec.watch => "watching".into(),
            None => "finished".into(),
        };
        set(status, |s| s.state = state);
        if !spec.watch {
            if failed.is_empty() {
                // The pass is over: a restart reads nothing more.
                durable
                    .write_at_position(Vec::new(), Some((id, 1)))
                    .wait()
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Pieces decoded ahead of the one being written: decoding the next
/// overlaps writing this one, and memory stays a few pieces.
const PIECES_AHEAD: usize = 1;

/// Durable steps in flight at once.
const STEPS_IN_FLIGHT: usize = 4;

/// Read `file` a piece at a time into `table`, each step with the file's
/// progress row. Returns the rows written and the error that ended the
/// file early, if one did.
#[allow(clippy::too_many_arguments)]
async fn read_file(
    mut reader: FileReader,
    file: &str,
    table: GlobalId,
    progress_table: &(GlobalId, SchemaRef),
    progress: &mut Progress,
    durable: &Durable,
    status: &Mutex<Status>,
) -> Result<(u64, Option<String>), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(PIECES_AHEAD);
    // Dropping `rx` (an error, or this task ending) stops the reading.
    tokio::spawn(async move {
        while let Some(piece) = reader.next().await {
            if tx.send(piece).await.is_err() {
                break;
            }
        }
    });
    let mut in_flight = Steps::new(STEPS_IN_FLIGHT, status, durable, vec![table]);
    let mut written = 0u64;
    let mut error = None;
    // An empty file is one empty piece: it still completes.
    let mut next = Some(rx.recv().await.unwrap_or_default());
    while let Some(piece) = next {
        error = piece.error.map(|e| error_text(file, e));
        next = match error {
            Some(_) => None,
            None => rx.recv().await,
        };
        // The file is complete with its last piece, if that read cleanly.
        let complete = error.is_none() && next.is_none();
        for (write, rows) in steps(file, piece.batches, complete, table, progress_table, progress)? {
            written += in_flight.push(durable.write(write), rows).await?;
        }
    }
    written += in_flight.drain().await?;
    Ok((written, error))
}

/// What a source's status says about `e` reading `file` (a malformed
/// file's error names it already).
fn error_text(file: &str, e: FileError) -> String {
    match e {
        FileError::Malformed { .. } => e.to_string(),
        e => format!("{file}: {e}"),
    }
}

/// `batches` of `file` as durable steps of at most [`CHUNK`] rows, each
/// with the file's progress row updated in `progress`; `complete`:
/// nothing of the file is left after them. Each step with its rows.
fn steps(
    file: &str,
    batches: Vec<RecordBatch>,
    complete: bool,
    table: GlobalId,
    progress_table: &(GlobalId, SchemaRef),
    progress: &mut Progress,
) -> Result<Vec<(Vec<TableUpdate>, u64)>, String> {
    let mut steps: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut in_step = 0;
    for batch in batches {
        let mut batch = batch;
        while batch.num_rows() > 0 {
            if in_step == CHUNK {
                steps.push(Vec::new());
                in_step = 0;
            }
            let take = batch.num_rows().min(CHUNK - in_step);
            steps.last_mut().expect("a step").push(batch.slice(0, take));
            batch = batch.slice(take, batch.num_rows() - take);
            in_step += take;
        }
    }
    let row = |rows: u64, complete: bool| {
        RecordBatch::try_new(
            progress_table.1.clone(),
            vec![
                Arc::new(StringArray::from(vec![file])),
                Arc::new(Int64Array::from(vec![rows as i64])),
                Arc::new(BooleanArray::from(vec![complete])),
            ],
        )
        .map_err(|e| e.to_string())
    };
    let last = steps.len() - 1;
    let mut out = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let rows: u64 = step.iter().map(|b| b.num_rows() as u64).sum();
        let old = progress.get(file).copied();
        let new = (old.map_or(0, |o| o.0) + rows, complete && i == last);
        if old == Some(new) || (old.is_none() && new == (0, false)) {
            continue;
        }
        let mut updates: Vec<TableUpdate> = step
            .into_iter()
            .map(|batch| TableUpdate {
                table,
                batch,
                diff: 1,
            })
            .collect();
        if let Some((rows, complete)) = old {
            updates.push(TableUpdate {
                table: progress_table.0,
                batch: row(rows, complete)?,
                diff: -1,
            });
        }
        updates.push(TableUpdate {
            table: progress_table.0,
            batch: row(new.0, new.1)?,
            diff: 1,
        });
        progress.insert(file.to_string(), new);
        out.push((updates, rows));
    }
    Ok(out)
}

/// What a file source's catalog item records beyond its statement.
pub(crate) fn detail(spec: &FileSpec, table: &str, progress: &str) -> String {
    let (header, delimiter) = match spec.format {
        Format::Csv { header, delimiter } => (header, delimiter),
        _ => (false, b','),
    };
    serde_json::json!({
        "files": spec.url,
        "format": spec.format.name(),
        "header": header,
        "delimiter": (delimiter as char).to_string(),
        "watch": spec.watch,
        "table": table,
        "progress": progress,
    })
    .to_string()
}

/// A file source from its recorded detail (`None`: not a file source's);
/// its tables must already be in `catalog`.
pub(crate) fn from_detail(
    id: u64,
    name: &str,
    v: &serde_json::Value,
    catalog: &crate::catalog::Catalog,
) -> Option<Result<Source, String>> {
    let url = v["files"].as_str()?;
    let parse = || -> Result<Source, String> {
        let delimiter = v["delimiter"]
            .as_str()
            .and_then(|d| d.bytes().next())
            .unwrap_or(b',');
        let format = Format::from_name(
            v["format"].as_str().ok_or("no format")?,
            v["header"].as_bool().unwrap_or(false),
            delimiter,
        )
        .ok_or("unknown format")?;
        let table = |k: &str| catalog.source_table(v[k].as_str().ok_or_else(|| format!("no {k}"))?);
        Ok(Source {
            id,
            name: name.to_string(),
            kind: SourceKind::Files {
                spec: FileSpec {
                    url: url.to_string(),
                    format,
                    watch: v["watch"].as_bool().unwrap_or(false),
                },
                table: table("table")?,
                progress: table("progress")?,
            },
            status: Default::default(),
            task: None,
        })
    };
    Some(parse())
}
