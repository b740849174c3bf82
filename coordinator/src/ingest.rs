//! Running a PostgreSQL source: the snapshot at the slot's consistent
//! point, then every upstream transaction, each applied atomically at one
//! Weir timestamp and made durable together with the LSN to resume after
//! it (so a restart neither loses nor repeats a change). The slot's
//! confirmed position advances only once Weir's copy is durable.
//!
//! Rows travel as PostgreSQL's text output of each value, turned into the
//! tables' Arrow types by the same per-type parsers `COPY` uses, so a
//! delete always names exactly the row its insert created. Updates and
//! deletes under `REPLICA IDENTITY DEFAULT` carry only the key, and
//! unchanged TOASTed values arrive as "unchanged": the task keeps each
//! table's current rows, packed, by replica-identity key to complete them.
//! (That copy lives in memory: a known cost, to be replaced by keyed reads
//! of the table's own arrangement.)
//!
//! This module turns upstream changes into table updates; the connector
//! owns the wire, the committer owns durability.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use rustc_hash::FxHashMap;
use tracing::{info, warn};
use weir_connectors::copy::{CopyFormat, TextColumns, decode, text_fields};
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
    pub kind: SourceKind,
    pub status: Arc<Mutex<Status>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Where a source's rows come from.
#[derive(Debug)]
pub enum SourceKind {
    /// A PostgreSQL publication, read through replication slot `slot`.
    Postgres {
        connection: String,
        publication: String,
        slot: String,
        feeds: Vec<Feed>,
    },
    /// A load generator feeding `tables` (in the generator's table order).
    Generator {
        spec: weir_connectors::generator::Spec,
        tables: Vec<(GlobalId, String, SchemaRef)>,
    },
    /// Files matching a URL pattern, feeding `table`, with what was
    /// ingested of each in `progress`.
    Files {
        spec: crate::files::FileSpec,
        table: (GlobalId, String, SchemaRef),
        progress: (GlobalId, String, SchemaRef),
    },
}

impl Source {
    /// The Weir tables this source feeds: id and name.
    pub fn tables(&self) -> Vec<(GlobalId, &str)> {
        match &self.kind {
            SourceKind::Postgres { feeds, .. } => feeds.iter().map(|f| (f.table, f.name.as_str())).collect(),
            SourceKind::Generator { tables, .. } => {
                tables.iter().map(|(id, n, _)| (*id, n.as_str())).collect()
            }
            SourceKind::Files { table, progress, .. } => {
                vec![(table.0, table.1.as_str()), (progress.0, progress.1.as_str())]
            }
        }
    }

    /// What `SHOW SOURCES` calls its type, and the connection and
    /// publication it reads (empty for a load generator).
    pub fn describe(&self) -> (String, &str, &str) {
        match &self.kind {
            SourceKind::Postgres {
                connection,
                publication,
                ..
            } => ("postgres".into(), connection, publication),
            SourceKind::Generator { spec, .. } => (format!("load-generator {}", spec.kind.name()), "", ""),
            SourceKind::Files { spec, .. } => (format!("files {}", spec.format.name()), &spec.url, ""),
        }
    }
}

/// A row's text values in one allocation: per value a little-endian `u32`
/// length (`u32::MAX` for NULL), then its bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Packed(Box<[u8]>);

impl Packed {
    fn new<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Packed {
        let mut out = Vec::new();
        for v in values {
            match v {
                None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
                Some(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        Packed(out.into_boxed_slice())
    }

    /// A whole row of `columns` values (missing ones NULL).
    fn row(columns: usize, row: &[Option<&str>]) -> Packed {
        Packed::new((0..columns).map(|i| row.get(i).copied().flatten()))
    }

    fn values(&self) -> Vec<Option<&str>> {
        let mut out = Vec::new();
        let mut rest = &self.0[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len);
            if len == u32::MAX {
                out.push(None);
                rest = tail;
            } else {
                let (v, tail) = tail.split_at(len as usize);
                // Packed from `&str`s, so always UTF-8.
                out.push(Some(std::str::from_utf8(v).unwrap_or_default()));
                rest = tail;
            }
        }
        out
    }
}

/// A table's current rows, by replica-identity key (the whole row under
/// REPLICA IDENTITY FULL, where equal rows are counted).
struct Rows {
    /// Key columns; empty for the whole row.
    key: Vec<usize>,
    columns: usize,
    by_key: FxHashMap<Packed, (Packed, u32)>,
}

impl Rows {
    fn new(feed: &Feed) -> Self {
        Rows {
            key: feed.upstream.key.clone(),
            columns: feed.upstream.columns.len(),
            by_key: FxHashMap::default(),
        }
    }

    fn key_of(&self, row: &[Option<&str>]) -> Packed {
        if self.key.is_empty() {
            Packed::row(self.columns, row)
        } else {
            Packed::new(self.key.iter().map(|i| row.get(*i).copied().flatten()))
        }
    }

    fn add(&mut self, row: &[Option<&str>]) {
        let key = self.key_of(row);
        let columns = self.columns;
        self.by_key
            .entry(key)
            .or_insert_with(|| (Packed::row(columns, row), 0))
            .1 += 1;
    }

    /// Add a row given as a `COPY` text line.
    fn add_line(&mut self, line: &str) {
        let fields = text_fields(line);
        self.add(&fields.iter().map(|f| f.as_deref()).collect::<Vec<_>>());
    }

    fn take(&mut self, key: &Packed) -> Option<Packed> {
        let (row, n) = self.by_key.get_mut(key)?;
        *n -= 1;
        if *n > 0 {
            return Some(row.clone());
        }
        self.by_key.remove(key).map(|(row, _)| row)
    }
}

/// A change's values as text, `None` for NULL (and for unchanged TOAST,
/// which the caller completes from the old row).
fn text(values: &[Value]) -> Vec<Option<&str>> {
    values
        .iter()
        .map(|v| match v {
            Value::Text(s) => Some(s.as_str()),
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
                let mut r = Rows::new(f);
                for line in current.get(&f.table).into_iter().flatten() {
                    r.add_line(line);
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

pub(crate) fn set(status: &Mutex<Status>, f: impl FnOnce(&mut Status)) {
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
                table_rows.add_line(line);
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
        // Per table, the rows this batch deletes and inserts.
        let mut inserts: Vec<Option<TextColumns>> = feeds.iter().map(|_| None).collect();
        let mut deletes: Vec<Option<TextColumns>> = feeds.iter().map(|_| None).collect();
        let columns = |t: usize| feeds[t].upstream.columns.len();
        // The publication may cover more tables than the source takes:
        // changes to those are not this source's business.
        let table = |relations: &HashMap<u32, usize>, oid: u32| relations.get(&oid).copied();
        for change in txns.iter().flat_map(|t| &t.changes) {
            match change {
                Change::Relation(r) => {
                    let Some(i) = feeds
                        .iter()
                        .position(|f| f.upstream.schema == r.namespace && f.upstream.name == r.name)
                    else {
                        continue;
                    };
                    check_relation(&feeds[i], r)?;
                    relations.insert(r.oid, i);
                }
                Change::Insert { relation, new } => {
                    let Some(t) = table(&relations, *relation) else {
                        continue;
                    };
                    let fields = text(new);
                    rows[t].add(&fields);
                    batch(&mut inserts, t, columns(t)).push_row(fields);
                }
                Change::Update { relation, old, new } => {
                    let Some(t) = table(&relations, *relation) else {
                        continue;
                    };
                    let new_fields = text(new);
                    let old_key = match old {
                        Some(o) => rows[t].key_of(&text(o)),
                        None => rows[t].key_of(&new_fields),
                    };
                    let old_row = rows[t].take(&old_key).ok_or_else(|| {
                        format!(
                            "an update of a row of {} that Weir does not have",
                            feeds[t].upstream.qualified()
                        )
                    })?;
                    let old_fields = old_row.values();
                    // Unchanged TOASTed values keep the old row's value.
                    let merged: Vec<Option<&str>> = (0..columns(t))
                        .map(|i| match new.get(i) {
                            Some(Value::Unchanged) => old_fields.get(i).copied().flatten(),
                            _ => new_fields.get(i).copied().flatten(),
                        })
                        .collect();
                    rows[t].add(&merged);
                    batch(&mut deletes, t, columns(t)).push_row(old_fields);
                    batch(&mut inserts, t, columns(t)).push_row(merged);
                }
                Change::Delete { relation, old } => {
                    let Some(t) = table(&relations, *relation) else {
                        continue;
                    };
                    let key = rows[t].key_of(&text(old));
                    let row = rows[t].take(&key).ok_or_else(|| {
                        format!(
                            "a delete of a row of {} that Weir does not have",
                            feeds[t].upstream.qualified()
                        )
                    })?;
                    batch(&mut deletes, t, columns(t)).push_row(row.values());
                }
                Change::Truncate(oids) => {
                    for oid in oids {
                        let Some(t) = table(&relations, *oid) else {
                            continue;
                        };
                        let out = batch(&mut deletes, t, columns(t));
                        for (_, (row, n)) in std::mem::take(&mut rows[t].by_key) {
                            for _ in 0..n {
                                out.push_row(row.values());
                            }
                        }
                    }
                }
            }
        }
        let mut updates = Vec::new();
        let mut changed = 0u64;
        for (t, feed) in feeds.iter().enumerate() {
            for (rows, diff) in [(deletes[t].take(), -1), (inserts[t].take(), 1)] {
                let Some(rows) = rows else { continue };
                let batch = rows
                    .finish(&feed.schema)
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

/// Table `t`'s rows on one side of a batch, started on first use.
fn batch(side: &mut [Option<TextColumns>], t: usize, columns: usize) -> &mut TextColumns {
    side[t].get_or_insert_with(|| TextColumns::new(columns))
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

/// An upstream table's new description still fits the source: every
/// column the source takes is there, in place, with its type (columns
/// added at the end are ignored).
fn check_relation(feed: &Feed, r: &weir_connectors::pgoutput::Relation) -> Result<(), String> {
    let expected: Vec<&str> = feed.upstream.columns.iter().map(|c| c.name.as_str()).collect();
    let got: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    if !got.starts_with(&expected) {
        let missing = expected.iter().find(|c| !got.contains(c)).unwrap_or(&"?");
        return Err(format!(
            "upstream table {} changed: column \"{missing}\" was dropped, renamed or retyped; drop and re-create the source",
            feed.upstream.qualified()
        ));
    }
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
    Ok(())
}
