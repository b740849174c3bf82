//! Running a load generator source: events `n..m` become one durable
//! step together with the position `m`, so after a restart the source
//! continues at the first event not yet durable and, since events are a
//! function of their number, neither loses nor repeats one.
//!
//! A paced generator emits event `n` once its time has come (events fall
//! due at `EVENTS PER SECOND` from the source's creation; after downtime
//! it catches up, then keeps pace). An unpaced one emits as fast as the
//! committer absorbs, with generation of the next chunk overlapping the
//! commit of the last. `PREGENERATE` builds every event first.
//!
//! This module paces and hands batches to the committer; the connector
//! draws the events, the committer owns durability.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use tracing::{info, warn};
use weir_connectors::generator::{Kind, Spec};
use weir_protocol::TableUpdate;
use weir_sql::GlobalId;

use crate::controller::now_ms;
use crate::durable::Durable;
use crate::ingest::{Source, SourceKind, Status, Steps, set};

/// Events per durable step when running unpaced.
const CHUNK: u64 = 100_000;

/// How often a paced generator emits what has fallen due.
const TICK: Duration = Duration::from_millis(10);

/// Steps handed to the committer and not yet durable.
const MAX_IN_FLIGHT: usize = 4;

/// Chunks that one step may carry: generated ahead (`PREGENERATE`), or
/// drawn at once when the views lag (one more per 4 steps they are
/// behind).
const MAX_MERGED: usize = 16;

/// Start generating into `tables` (the generator's tables in order, with
/// their schemas) after `position` events.
pub fn spawn(
    id: GlobalId,
    name: String,
    spec: Spec,
    tables: Vec<(GlobalId, SchemaRef)>,
    position: Option<u64>,
    durable: Durable,
    status: Arc<Mutex<Status>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(id, &spec, &tables, position.unwrap_or(0), &durable, &status).await {
            warn!(source = name, error = %e, "load generator stopped");
            set(&status, |s| s.state = format!("error: {e}"));
        }
    })
}

async fn run(
    id: GlobalId,
    spec: &Spec,
    tables: &[(GlobalId, SchemaRef)],
    mut next: u64,
    durable: &Durable,
    status: &Mutex<Status>,
) -> Result<(), String> {
    let schemas: Vec<SchemaRef> = tables.iter().map(|(_, s)| s.clone()).collect();
    // Drawing events is CPU work: off the async threads.
    let generate = |from: u64, to: u64| {
        let spec = spec.clone();
        let schemas = schemas.clone();
        async move {
            tokio::task::spawn_blocking(move || spec.generate(from, to, &schemas))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    };
    let mut ahead: VecDeque<(u64, Vec<RecordBatch>)> = VecDeque::new();
    if spec.pregenerate {
        set(status, |s| s.state = "generating".into());
        let max = spec.max_events.unwrap_or(next);
        let started = std::time::Instant::now();
        let mut from = next;
        while from < max {
            let to = (from + CHUNK).min(max);
            ahead.push_back((to, generate(from, to).await?));
            from = to;
        }
        info!(
            events = max - next,
            seconds = started.elapsed().as_secs_f64(),
            "events generated ahead"
        );
    }
    set(status, |s| s.state = "running".into());
    let ids = tables.iter().map(|(id, _)| *id).collect();
    let mut inflight = Steps::new(MAX_IN_FLIGHT, status, durable, ids);
    let end = spec.max_events.unwrap_or(u64::MAX);
    while next < end {
        let due = spec.due(now_ms());
        // Views that lag behind take more in one step: one time instead
        // of many, which reductions (whole-group ones above all) pay for
        // per time, not per row.
        let merge = (inflight.backlog() / 4).min(MAX_MERGED - 1);
        // The next step: a chunk generated ahead, or what is due now.
        let mut to = match ahead.front() {
            Some((to, _)) => *to,
            None => due.min(next + CHUNK * (1 + merge as u64)),
        };
        if due < to || to == next {
            // Paced and not yet due: wait for the next tick (and let
            // finished steps report meanwhile).
            let wake = tokio::time::Instant::now() + TICK;
            inflight.drain().await?;
            tokio::time::sleep_until(wake).await;
            continue;
        }
        let mut chunks = vec![match ahead.pop_front() {
            Some((_, batches)) => batches,
            None => generate(next, to).await?,
        }];
        // Events generated ahead have all arrived: a step takes as many
        // as it may, as a CDC step folds every transaction waiting.
        let merge = if spec.pregenerate { MAX_MERGED - 1 } else { merge };
        while chunks.len() <= merge
            && ahead.front().is_some_and(|(next_to, _)| *next_to <= due)
            && let Some((next_to, batches)) = ahead.pop_front()
        {
            chunks.push(batches);
            to = next_to;
        }
        let updates: Vec<TableUpdate> = chunks
            .into_iter()
            .flat_map(|batches| tables.iter().zip(batches))
            .filter(|(_, b)| b.num_rows() > 0)
            .map(|((table, _), batch)| TableUpdate {
                table: *table,
                batch,
                diff: 1,
            })
            .collect();
        inflight
            .push(durable.write_at_position(updates, Some((id, to))), to - next)
            .await?;
        next = to;
    }
    inflight.drain().await?;
    info!(events = next, "load generator finished");
    set(status, |s| s.state = "finished".into());
    Ok(())
}

/// What a generator source's catalog item records beyond its statement:
/// the spec with its base time, and its tables.
pub(crate) fn detail(spec: &Spec, tables: &[String]) -> String {
    serde_json::json!({
        "generator": spec.kind.name(),
        "rate": spec.rate,
        "max_events": spec.max_events,
        "seed": spec.seed,
        "pregenerate": spec.pregenerate,
        "base_time_ms": spec.base_time_ms,
        "upstream": spec.tables,
        "tables": tables,
    })
    .to_string()
}

/// A generator source from its recorded detail (`None`: not a generator's
/// detail); its tables must already be in `catalog`.
pub(crate) fn from_detail(
    id: u64,
    name: &str,
    v: &serde_json::Value,
    catalog: &crate::catalog::Catalog,
) -> Option<Result<Source, String>> {
    let kind = Kind::from_name(v["generator"].as_str()?)?;
    let parse = || -> Result<Source, String> {
        let number = |k: &str| v[k].as_u64().ok_or_else(|| format!("no {k}"));
        let spec = Spec {
            kind,
            rate: number("rate")?,
            max_events: v["max_events"].as_u64(),
            seed: number("seed")?,
            pregenerate: v["pregenerate"].as_bool().unwrap_or(false),
            base_time_ms: number("base_time_ms")?,
            // Recorded since FOR TABLES; all of them before.
            tables: match v.get("upstream") {
                Some(u) => serde_json::from_value(u.clone()).map_err(|e| e.to_string())?,
                None => kind.every_table(),
            },
        };
        let tables = v["tables"]
            .as_array()
            .ok_or("no tables")?
            .iter()
            .map(|t| catalog.source_table(t.as_str().ok_or("a table name")?))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Source {
            id,
            name: name.to_string(),
            kind: SourceKind::Generator { spec, tables },
            status: Default::default(),
            task: None,
        })
    };
    Some(parse())
}
