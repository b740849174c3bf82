//! Running a PostgreSQL source: the snapshot at the slot's consistent
//! point, then every upstream transaction, each applied atomically at one
//! Weir timestamp and made durable together with the LSN to resume after
//! it (so a restart neither loses nor repeats a change). The slot's
//! confirmed position advances only once Weir's copy is durable.
//!
//! Rows travel as `COPY` text lines from upstream to the tables' Arrow
//! types through one decoder, so a delete always names exactly the row its
//! insert created. Updates and deletes under `REPLICA IDENTITY DEFAULT`
//! carry only the key, and unchanged TOASTed values arrive as "unchanged":
//! the task keeps each table's current rows by replica-identity key to
//! complete them. (That copy lives in memory: a known cost, to be replaced
//! by keyed reads of the table's own arrangement.)
//!
//! This module turns upstream changes into table updates; the connector
//! owns the wire, the committer owns durability.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use tracing::{info, warn};
use weir_connectors::copy::{CopyFormat, decode, text_fields, text_line};
use weir_connectors::pgoutput::Value;
use weir_connectors::postgres::{Change, PgConfig, UpstreamTable};
use weir_protocol::TableUpdate;
use weir_sql::GlobalId;

use crate::durable::Durable;

/// The most upstream transactions folded into one durable step.
const MAX_TRANSACTIONS_PER_COMMIT: usize = 10_000;

/// One upstream table and the Weir table it feeds.
#[derive(Debug, Clone)]
pub struct Feed {
    pub upstream: UpstreamTable,
    pub table: GlobalId,
    pub name: String,
    pub schema: SchemaRef,
}

/// What `SHOW SOURCES` and `weir_catalog.sources` report.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `snapshotting`, `connecting`, `streaming`, or `error: ...`.
    pub state: String,
    /// Rows read by the snapshot so far, and how many it holds.
    pub snapshot_rows: u64,
    pub snapshot_total: u64,
    pub lsn_received: u64,
    pub lsn_committed: u64,
    /// The upstream's WAL position as last reported.
    pub lsn_upstream: u64,
    /// Upstream commit time (µs since the epoch) of the newest transaction
    /// made durable.
    pub committed_at_micros: i64,
    /// Rows inserted or deleted since the source started.
    pub rows: u64,
}

impl Status {
    /// WAL received from the upstream but not yet durable in Weir, in
    /// bytes.
    pub fn lag_bytes(&self) -> u64 {
        self.lsn_upstream.saturating_sub(self.lsn_committed)
    }

    /// How far behind the upstream's clock Weir's copy is, in ms: zero
    /// when nothing is outstanding.
    pub fn lag_ms(&self) -> i64 {
        if self.lag_bytes() == 0 || self.committed_at_micros == 0 {
            return 0;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        (now - self.committed_at_micros).max(0) / 1000
    }
}

#[derive(Debug)]
pub struct Source {
    pub id: GlobalId,
    pub name: String,
    pub connection: String,
    pub publication: String,
    pub slot: String,
    pub feeds: Vec<Feed>,
    pub status: Arc<Mutex<Status>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// A table's current rows, by replica-identity key (all columns under
/// REPLICA IDENTITY FULL, where equal rows are counted).
#[derive(Default)]
struct Rows {
    by_key: HashMap<Vec<Option<String>>, (String, usize)>,
}

impl Rows {
    fn add(&mut self, key: Vec<Option<String>>, line: String) {
        self.by_key.entry(key).or_insert((line, 0)).1 += 1;
    }

    fn take(&mut self, key: &[Option<String>]) -> Option<String> {
        let (line, n) = self.by_key.get_mut(key)?;
        *n -= 1;
        let line = line.clone();
        if *n == 0 {
            self.by_key.remove(key);
        }
        Some(line)
    }
}

fn key_of(feed: &Feed, fields: &[Option<String>]) -> Vec<Option<String>> {
    if feed.upstream.key.is_empty() {
        fields.to_vec()
    } else {
        feed.upstream
            .key
            .iter()
            .map(|i| fields.get(*i).cloned().flatten())
            .collect()
    }
}

fn text(values: &[Value]) -> Vec<Option<String>> {
    values
        .iter()
        .map(|v| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Start the task feeding `feeds` from the slot `slot`, after `position`
/// (none: take the snapshot first). `current` holds each table's rows as
/// `COPY` text lines, after a restart.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    id: GlobalId,
    name: String,
    config: PgConfig,
    slot: String,
    publication: String,
    feeds: Vec<Feed>,
    position: Option<u64>,
    current: HashMap<GlobalId, Vec<String>>,
    durable: Durable,
    status: Arc<Mutex<Status>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rows: Vec<Rows> = feeds
            .iter()
            .map(|f| {
                let mut r = Rows::default();
                for line in current.get(&f.table).into_iter().flatten() {
                    r.add(key_of(f, &text_fields(line)), line.clone());
                }
                r
            })
            .collect();
        let mut position = position;
        loop {
            let run = run(
                id,
                &config,
                &slot,
                &publication,
                &feeds,
                &mut position,
                &mut rows,
                &durable,
                &status,
            )
            .await;
            let Err(e) = run else { return };
            warn!(source = name, error = %e, "source stopped; retrying in 1 s");
            status.lock().expect("status lock").state = format!("error: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn set(status: &Mutex<Status>, f: impl FnOnce(&mut Status)) {
    f(&mut status.lock().expect("status lock"));
}

#[allow(clippy::too_many_arguments)]
async fn run(
    id: GlobalId,
    config: &PgConfig,
    slot: &str,
    publication: &str,
    feeds: &[Feed],
    position: &mut Option<u64>,
    rows: &mut [Rows],
    durable: &Durable,
    status: &Mutex<Status>,
) -> Result<(), String> {
    let upstream: Vec<UpstreamTable> = feeds.iter().map(|f| f.upstream.clone()).collect();
    set(status, |s| {
        s.state = if position.is_none() {
            "snapshotting".into()
        } else {
            "connecting".into()
        }
    });
    if position.is_none() {
        // A snapshot that did not become durable starts over, on a new
        // slot: the old one's exported snapshot is gone.
        let _ = weir_connectors::postgres::drop_slot(config, slot).await;
    }
    let progress = |done: u64, total: u64| {
        info!(rows_done = done, rows_total = total, "snapshot progress");
        set(status, |s| {
            s.snapshot_rows = done;
            s.snapshot_total = total;
        });
    };
    let (snapshot, mut stream) =
        weir_connectors::postgres::open_stream(config, slot, publication, &upstream, *position, &progress)
            .await
            .map_err(|e| e.to_string())?;
    if let Some(snapshot) = snapshot {
        let mut updates = Vec::new();
        let mut total = 0u64;
        for ((feed, data), table_rows) in feeds.iter().zip(&snapshot.tables).zip(rows.iter_mut()) {
            let batch = decode(data, &feed.schema, &CopyFormat::text())
                .map_err(|e| format!("snapshot of {}: {e}", feed.upstream.qualified()))?;
            for line in String::from_utf8_lossy(data).lines() {
                table_rows.add(key_of(feed, &text_fields(line)), line.to_string());
            }
            total += batch.num_rows() as u64;
            info!(table = feed.name, rows = batch.num_rows(), "snapshot read");
            updates.push(TableUpdate {
                table: feed.table,
                batch,
                diff: 1,
            });
        }
        durable
            .write_at_position(updates, Some((id, snapshot.lsn)))
            .wait()
            .await
            .map_err(|e| e.to_string())?;
        stream.ack(snapshot.lsn);
        *position = Some(snapshot.lsn);
        info!(
            source_rows = total,
            lsn = snapshot.lsn,
            "snapshot durable; streaming"
        );
        set(status, |s| {
            s.rows += total;
            s.snapshot_rows = total;
            s.lsn_committed = snapshot.lsn;
            s.lsn_received = snapshot.lsn;
            s.lsn_upstream = s.lsn_upstream.max(snapshot.lsn);
        });
    }
    set(status, |s| s.state = "streaming".into());
    let mut relations: HashMap<u32, usize> = feeds
        .iter()
        .enumerate()
        .map(|(i, f)| (f.upstream.oid, i))
        .collect();
    // Batches handed to the committer and not yet durable, oldest first:
    // reading goes on while they commit (the committer folds them into
    // few durable steps), and each is confirmed upstream once durable.
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    loop {
        // Every transaction already waiting joins this batch: each still
        // lands whole, at one timestamp, and a busy upstream costs one
        // durable step per batch rather than per transaction.
        let first = loop {
            let full = inflight.len() >= MAX_IN_FLIGHT;
            let Some(oldest) = inflight.front_mut() else {
                break stream.next().await.map_err(|e| e.to_string())?;
            };
            if full {
                oldest.write.done().await.map_err(|e| e.to_string())?;
                settle(inflight.pop_front(), &stream, status);
                continue;
            }
            tokio::select! {
                t = stream.next() => break t.map_err(|e| e.to_string())?,
                done = oldest.write.done() => {
                    done.map_err(|e| e.to_string())?;
                    settle(inflight.pop_front(), &stream, status);
                }
            }
        };
        let mut txns = vec![first];
        while txns.len() < MAX_TRANSACTIONS_PER_COMMIT {
            match futures::FutureExt::now_or_never(stream.next()) {
                Some(t) => txns.push(t.map_err(|e| e.to_string())?),
                None => break,
            }
        }
        let end_lsn = txns.last().map(|t| t.end_lsn).unwrap_or_default();
        let committed_at = txns.last().map(|t| t.commit_time_micros).unwrap_or_default();
        let upstream_lsn = stream.server_lsn();
        set(status, |s| {
            s.lsn_received = end_lsn;
            s.lsn_upstream = upstream_lsn.max(end_lsn);
        });
        // Transactions already durable before a restart: the slot replays
        // from its confirmed position, which may lag Weir's.
        txns.retain(|t| position.is_none_or(|p| t.end_lsn > p));
        if txns.is_empty() {
            continue;
        }
        let mut inserts: Vec<Vec<String>> = vec![Vec::new(); feeds.len()];
        let mut deletes: Vec<Vec<String>> = vec![Vec::new(); feeds.len()];
        // The publication may cover more tables than the source takes:
        // changes to those are not this source's business.
        let table = |relations: &HashMap<u32, usize>, oid: u32| relations.get(&oid).copied();
        for change in txns.into_iter().flat_map(|t| t.changes) {
            match change {
                Change::Relation(r) => {
                    let Some(i) = feeds
                        .iter()
                        .position(|f| f.upstream.schema == r.namespace && f.upstream.name == r.name)
                    else {
                        continue;
                    };
                    let expected: Vec<&str> = feeds[i]
                        .upstream
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect();
                    let got: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
                    if !got.starts_with(&expected) {
                        let missing = expected.iter().find(|c| !got.contains(c)).unwrap_or(&"?");
                        return Err(format!(
                            "upstream table {} changed: column \"{missing}\" was dropped, renamed or retyped; drop and re-create the source",
                            feeds[i].upstream.qualified()
                        ));
                    }
                    let feed = &feeds[i];
                    if let Some((col, _)) = feed
                        .upstream
                        .columns
                        .iter()
                        .zip(&r.columns)
                        .find(|(mine, theirs)| mine.type_oid != 0 && mine.type_oid != theirs.type_oid)
                    {
                        return Err(format!(
                            "upstream table {} changed: column \"{}\" changed type; drop and re-create the source",
                            feed.upstream.qualified(),
                            col.name
                        ));
                    }
                    relations.insert(r.oid, i);
                }
                Change::Insert { relation, new } => {
                    let Some(t) = table(&relations, relation) else {
                        continue;
                    };
                    let fields = fit(&feeds[t], text(&new));
                    let line = text_line(fields.iter().map(|v| v.as_deref()));
                    rows[t].add(key_of(&feeds[t], &fields), line.clone());
                    inserts[t].push(line);
                }
                Change::Update { relation, old, new } => {
                    let Some(t) = table(&relations, relation) else {
                        continue;
                    };
                    let feed = &feeds[t];
                    let new_fields = fit(feed, text(&new));
                    let old_key = match &old {
                        Some(o) => key_of(feed, &fit(feed, text(o))),
                        None => key_of(feed, &new_fields),
                    };
                    let old_line = rows[t].take(&old_key).ok_or_else(|| {
                        format!(
                            "an update of a row of {} that Weir does not have",
                            feed.upstream.qualified()
                        )
                    })?;
                    let old_fields = text_fields(&old_line);
                    // Unchanged TOASTed values keep the old row's value.
                    let merged: Vec<Option<String>> = new_fields
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| match new.get(i) {
                            Some(Value::Unchanged) => old_fields.get(i).cloned().flatten(),
                            _ => v,
                        })
                        .collect();
                    let line = text_line(merged.iter().map(|v| v.as_deref()));
                    rows[t].add(key_of(feed, &merged), line.clone());
                    deletes[t].push(old_line);
                    inserts[t].push(line);
                }
                Change::Delete { relation, old } => {
                    let Some(t) = table(&relations, relation) else {
                        continue;
                    };
                    let key = key_of(&feeds[t], &fit(&feeds[t], text(&old)));
                    let line = rows[t].take(&key).ok_or_else(|| {
                        format!(
                            "a delete of a row of {} that Weir does not have",
                            feeds[t].upstream.qualified()
                        )
                    })?;
                    deletes[t].push(line);
                }
                Change::Truncate(oids) => {
                    for oid in oids {
                        let Some(t) = table(&relations, oid) else { continue };
                        for (_, (line, n)) in std::mem::take(&mut rows[t].by_key) {
                            deletes[t].extend(std::iter::repeat_n(line, n));
                        }
                    }
                }
            }
        }
        let mut updates = Vec::new();
        let mut changed = 0u64;
        for (t, feed) in feeds.iter().enumerate() {
            for (lines, diff) in [(&deletes[t], -1), (&inserts[t], 1)] {
                if lines.is_empty() {
                    continue;
                }
                let mut data = lines.join("\n");
                data.push('\n');
                let batch = decode(data.as_bytes(), &feed.schema, &CopyFormat::text())
                    .map_err(|e| format!("a change to {}: {e}", feed.upstream.qualified()))?;
                changed += batch.num_rows() as u64;
                updates.push(TableUpdate {
                    table: feed.table,
                    batch,
                    diff,
                });
            }
        }
        inflight.push_back(InFlight {
            write: durable.write_at_position(updates, Some((id, end_lsn))),
            end_lsn,
            committed_at,
            changed,
        });
        // Later retries resume after what was handed over: it becomes
        // durable unless the server stops (and then restarts from what is).
        *position = Some(end_lsn);
    }
}

/// Batches a source may have handed to the committer and not yet seen
/// durable.
const MAX_IN_FLIGHT: usize = 8;

struct InFlight {
    write: crate::durable::PendingWrite,
    end_lsn: u64,
    committed_at: i64,
    changed: u64,
}

/// A batch is durable: confirm it upstream and report it.
fn settle(
    done: Option<InFlight>,
    stream: &weir_connectors::postgres::ReplicationStream,
    status: &Mutex<Status>,
) {
    let Some(done) = done else { return };
    stream.ack(done.end_lsn);
    let caught_up = stream.caught_up_lsn();
    set(status, |s| {
        s.lsn_committed = done.end_lsn.max(caught_up);
        s.committed_at_micros = done.committed_at;
        s.rows += done.changed;
    });
}

/// The values of the source's columns, in its order (an upstream table
/// may have gained columns at the end since the source was created).
fn fit(feed: &Feed, mut values: Vec<Option<String>>) -> Vec<Option<String>> {
    values.resize(feed.upstream.columns.len(), None);
    values
}
