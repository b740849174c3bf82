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
use tracing::{info, warn};
use weir_connectors::copy::{CopyFormat, TextColumns, decode, text_fields};
use weir_connectors::pgoutput::Value;
use weir_connectors::postgres::{Change, PgConfig, UpstreamTable};
use weir_protocol::TableUpdate;
use weir_sql::GlobalId;

use crate::durable::{Durable, PendingWrite};
use crate::error::AdapterError;

/// The most upstream transactions folded into one durable step.
const MAX_TRANSACTIONS_PER_COMMIT: usize = 10_000;

/// One upstream table and the Weir table it feeds.
#[derive(Debug, Clone)]
pub struct Feed {
    pub upstream: UpstreamTable,
    pub table: GlobalId,
    pub name: String,
    pub schema: SchemaRef,
    /// The table's earlier versions, from before columns were added
    /// upstream: each gets the first columns of every change.
    pub retired: Vec<(GlobalId, SchemaRef)>,
}

impl Feed {
    /// `batch` (in this feed's columns) as updates of the table and, in
    /// their first columns, of its earlier versions.
    fn updates(
        &self,
        batch: arrow::array::RecordBatch,
        diff: i64,
        out: &mut Vec<TableUpdate>,
    ) -> Result<(), String> {
        for (version, schema) in &self.retired {
            let columns = batch.columns()[..schema.fields().len()].to_vec();
            let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| format!("a change to {}: {e}", self.upstream.qualified()))?;
            out.push(TableUpdate {
                table: *version,
                batch,
                diff,
            });
        }
        out.push(TableUpdate {
            table: self.table,
            batch,
            diff,
        });
        Ok(())
    }

    /// A change's values as text, `None` for NULL (and for unchanged
    /// TOAST, which the caller completes from the old row); a change from
    /// before columns were added gets their value in older rows.
    fn values<'a>(&'a self, values: &'a [Value]) -> Vec<Option<&'a str>> {
        let mut out = text(values);
        out.extend(
            self.upstream
                .columns
                .iter()
                .skip(values.len())
                .map(|c| c.missing.as_deref()),
        );
        out
    }
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
        /// The `CREATE SOURCE` statement (its catalog item is rewritten
        /// when a table gets a new version).
        sql: String,
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
#[derive(Clone, PartialEq, Eq)]
struct Packed(Box<[u8]>);

impl Packed {
    /// A whole row of `columns` values (missing ones NULL).
    fn row(columns: usize, row: &[Option<&str>]) -> Packed {
        let mut out = Vec::new();
        for v in (0..columns).map(|i| row.get(i).copied().flatten()) {
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

    /// The values, in order, without allocating.
    fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len);
            if len == u32::MAX {
                rest = tail;
                return Some(None);
            }
            let (v, tail) = tail.split_at(len as usize);
            rest = tail;
            // Packed from `&str`s, so always UTF-8.
            Some(Some(std::str::from_utf8(v).unwrap_or_default()))
        })
    }

    fn values(&self) -> Vec<Option<&str>> {
        self.iter().collect()
    }
}

/// A table's current rows, each once with its count, found by its
/// replica-identity key (the whole row under REPLICA IDENTITY FULL, where
/// equal rows are counted). The key is hashed from the row's own values,
/// so a row costs one allocation, not a key's and a row's.
struct Rows {
    key: Key,
    rows: hashbrown::HashTable<(Packed, u32)>,
}

/// Which columns identify a row.
struct Key {
    /// Key columns; empty for the whole row.
    columns: Vec<usize>,
    /// The row's width.
    width: usize,
}

impl Key {
    fn hash<'a>(values: impl Iterator<Item = Option<&'a str>>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        for v in values {
            v.hash(&mut h);
        }
        h.finish()
    }

    /// The hash of the key of a row given as values.
    fn of_values(&self, row: &[Option<&str>]) -> u64 {
        let value = |i: usize| row.get(i).copied().flatten();
        if self.columns.is_empty() {
            Key::hash((0..self.width).map(value))
        } else {
            Key::hash(self.columns.iter().map(|i| value(*i)))
        }
    }

    /// The hash of the key of a stored row.
    fn of_packed(&self, row: &Packed) -> u64 {
        if self.columns.is_empty() {
            Key::hash(row.iter())
        } else {
            Key::hash(self.columns.iter().map(|i| row.iter().nth(*i).flatten()))
        }
    }

    /// Whether stored `row` has the key of `probe`.
    fn matches(&self, row: &Packed, probe: &[Option<&str>]) -> bool {
        let value = |i: usize| probe.get(i).copied().flatten();
        if self.columns.is_empty() {
            row.iter().eq((0..self.width).map(value))
        } else {
            self.columns
                .iter()
                .all(|i| row.iter().nth(*i).flatten() == value(*i))
        }
    }
}

impl Rows {
    fn new(feed: &Feed) -> Self {
        Rows {
            key: Key {
                columns: feed.upstream.key.clone(),
                width: feed.upstream.columns.len(),
            },
            rows: hashbrown::HashTable::new(),
        }
    }

    fn add(&mut self, row: &[Option<&str>]) {
        let Rows { key, rows } = self;
        let hash = key.of_values(row);
        match rows.find_mut(hash, |(stored, _)| key.matches(stored, row)) {
            Some((_, n)) => *n += 1,
            None => {
                rows.insert_unique(hash, (Packed::row(key.width, row), 1), |(stored, _)| {
                    key.of_packed(stored)
                });
            }
        }
    }

    /// Add a row given as a `COPY` text line.
    fn add_line(&mut self, line: &str) {
        let fields = text_fields(line);
        self.add(&fields.iter().map(|f| f.as_deref()).collect::<Vec<_>>());
    }

    /// Give every row the values `extra` in columns added at the end.
    fn widen(&mut self, extra: &[Option<&str>]) {
        let old = std::mem::take(&mut self.rows);
        self.key.width += extra.len();
        for (row, n) in old {
            let mut values = row.values();
            values.extend(extra);
            // Under REPLICA IDENTITY FULL the key is the whole row.
            let widened = Packed::row(self.key.width, &values);
            let key = &self.key;
            self.rows
                .insert_unique(key.of_values(&values), (widened, n), |(stored, _)| {
                    key.of_packed(stored)
                });
        }
    }

    /// Remove one row with the key of `probe` (a row whose key columns
    /// are set), returning it.
    fn take(&mut self, probe: &[Option<&str>]) -> Option<Packed> {
        let Rows { key, rows } = self;
        let hash = key.of_values(probe);
        let entry = rows
            .find_entry(hash, |(stored, _)| key.matches(stored, probe))
            .ok()?;
        if entry.get().1 > 1 {
            let (row, n) = entry.into_mut();
            *n -= 1;
            return Some(row.clone());
        }
        Some(entry.remove().0.0)
    }

    /// Every row, once per copy.
    fn each(&self) -> impl Iterator<Item = &Packed> {
        self.rows
            .iter()
            .flat_map(|(row, n)| std::iter::repeat_n(row, *n as usize))
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

/// What a running PostgreSQL source needs besides its tables.
pub struct Ingest {
    pub id: GlobalId,
    pub name: String,
    pub config: PgConfig,
    pub slot: String,
    pub publication: String,
    pub durable: Durable,
    pub status: Arc<Mutex<Status>>,
    pub widener: Widener,
}

/// Start the task feeding `feeds` from the source's slot, after `position`
/// (none: take the snapshot first). `current` holds each table's rows as
/// `COPY` text lines, after a restart.
pub fn spawn(
    task: Ingest,
    mut feeds: Vec<Feed>,
    position: Option<u64>,
    current: HashMap<GlobalId, Vec<String>>,
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
            let Err(e) = run(&task, &mut feeds, &mut position, &mut rows).await else {
                return;
            };
            warn!(source = task.name, error = %e, "source stopped; retrying in 1 s");
            task.status.lock().expect("status lock").state = format!("error: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

pub(crate) fn set(status: &Mutex<Status>, f: impl FnOnce(&mut Status)) {
    f(&mut status.lock().expect("status lock"));
}

/// A source's durable steps in flight, oldest first, each with the rows it
/// carries: at most `limit` at once, and a step's rows count as ingested
/// in the source's status once it is durable.
///
/// Durable steps then wait for the views reading the source's `tables`:
/// once more than [`STEPS_UNABSORBED`] are durable but not yet absorbed by
/// every view, the oldest is waited for. Without that a source can outrun
/// its views without bound, its rows piling up in the workers' input
/// queues. How many are behind ([`Steps::backlog`]) lets a source that has
/// rows waiting send them in fewer, larger steps.
pub(crate) struct Steps<'a> {
    queue: VecDeque<(PendingWrite, u64)>,
    limit: usize,
    status: &'a Mutex<Status>,
    durable: &'a Durable,
    tables: Vec<GlobalId>,
    /// Each durable step's wait for the views, oldest first.
    unabsorbed: VecDeque<tokio::task::JoinHandle<Result<(), AdapterError>>>,
}

/// Durable steps a source may be ahead of its views: a bound on what
/// piles up in the workers' queues (64 steps of 100,000 rows), not a
/// tight leash. Views that reduce (Nexmark q4) run faster the more steps
/// they take at once: at 2 or 16 steps q4 ran at 237,000 events/s, with
/// no bound at 363,000.
const STEPS_UNABSORBED: usize = 64;

impl<'a> Steps<'a> {
    pub(crate) fn new(
        limit: usize,
        status: &'a Mutex<Status>,
        durable: &'a Durable,
        tables: Vec<GlobalId>,
    ) -> Steps<'a> {
        Steps {
            queue: VecDeque::new(),
            limit,
            status,
            durable,
            tables,
            unabsorbed: VecDeque::new(),
        }
    }

    /// Hand over a step of `rows`; wait for the oldest while `limit` are
    /// in flight. Returns the rows made durable meanwhile.
    pub(crate) async fn push(&mut self, write: PendingWrite, rows: u64) -> Result<u64, String> {
        self.queue.push_back((write, rows));
        let mut durable = 0;
        while self.queue.len() >= self.limit {
            durable += self.settle_oldest().await?;
        }
        Ok(durable)
    }

    /// Wait for every step in flight. Returns the rows made durable.
    pub(crate) async fn drain(&mut self) -> Result<u64, String> {
        let mut durable = 0;
        while !self.queue.is_empty() {
            durable += self.settle_oldest().await?;
        }
        Ok(durable)
    }

    async fn settle_oldest(&mut self) -> Result<u64, String> {
        let Some((write, rows)) = self.queue.pop_front() else {
            return Ok(0);
        };
        let time = write.wait().await.map_err(|e| e.to_string())?;
        set(self.status, |s| s.rows += rows);
        let (durable, tables) = (self.durable.clone(), self.tables.clone());
        self.unabsorbed
            .push_back(tokio::spawn(async move { durable.absorbed(&tables, time).await }));
        while self.unabsorbed.len() > STEPS_UNABSORBED {
            let oldest = self.unabsorbed.pop_front().expect("not empty");
            oldest
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(rows)
    }

    /// Steps handed over that the views have not absorbed yet.
    pub(crate) fn backlog(&mut self) -> usize {
        while self.unabsorbed.front().is_some_and(|h| h.is_finished()) {
            self.unabsorbed.pop_front();
        }
        self.queue.len() + self.unabsorbed.len()
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        for waiting in &self.unabsorbed {
            waiting.abort();
        }
    }
}

async fn run(
    task: &Ingest,
    feeds: &mut [Feed],
    position: &mut Option<u64>,
    rows: &mut [Rows],
) -> Result<(), String> {
    let Ingest {
        id,
        name,
        config,
        slot,
        publication,
        durable,
        status,
        ..
    } = task;
    let id = *id;
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
        // Columns added upstream since the source was created (and before
        // the snapshot): the table's next version holds them.
        for (i, now) in snapshot.columns.iter().enumerate() {
            let theirs: Vec<(&str, u32)> = now.iter().map(|c| (c.name.as_str(), c.type_oid)).collect();
            check_columns(&feeds[i], &theirs, snapshot.lsn)?;
            if now.len() > feeds[i].upstream.columns.len() {
                let added = now[feeds[i].upstream.columns.len()..].to_vec();
                new_version(task, feeds, rows, i, added).await?;
            }
        }
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
            feed.updates(batch, 1, &mut updates)?;
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
            // Unconstrained: tokio's cooperative budget (128 receives
            // per poll) would otherwise end a batch after about one
            // transaction of 100 rows, even with thousands waiting.
            match futures::FutureExt::now_or_never(tokio::task::unconstrained(stream.next())) {
                Some(t) => txns.push(t.map_err(|e| e.to_string())?),
                None => break,
            }
        }
        let end_lsn = txns.last().map(|t| t.end_lsn).unwrap_or_default();
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
        // Per table, the rows this batch deletes and inserts. A table that
        // gained columns upstream gets its next version just before the
        // transaction that first shows them (what came before is handed
        // over first); that transaction's changes from before the columns
        // existed get the value the new columns have in older rows.
        // A batch that fails partway (an upstream change Weir cannot
        // apply, an upstream that went away while a table got its next
        // version) puts the rows back as they were at the last hand-over,
        // which is where the retry resumes: applying part of it twice
        // would retract rows that were never written.
        let mut undo = Undo::default();
        let result = async {
            let mut changes = Changes::new(feeds.len());
            let mut last: Option<&weir_connectors::postgres::Transaction> = None;
            for txn in &txns {
                let widened = widenings(feeds, txn)?;
                if !widened.is_empty() {
                    if let Some(done) = last.take() {
                        let updates = changes.finish(feeds)?;
                        hand_over(updates, done, id, durable, &mut inflight, position);
                        undo.clear();
                        changes = Changes::new(feeds.len());
                    }
                    for (i, relation) in widened {
                        widen(task, feeds, rows, i, &relation, txn.end_lsn).await?;
                        info!(
                            source = name,
                            table = feeds[i].name,
                            "upstream columns added: table has a new version"
                        );
                    }
                }
                for change in &txn.changes {
                    apply(
                        change,
                        txn.end_lsn,
                        feeds,
                        rows,
                        &mut relations,
                        &mut changes,
                        &mut undo,
                    )?;
                }
                last = Some(txn);
            }
            if let Some(done) = last {
                let updates = changes.finish(feeds)?;
                hand_over(updates, done, id, durable, &mut inflight, position);
                undo.clear();
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            undo.revert(rows);
            return Err(e);
        }
    }
}

/// Hand a batch of table updates, ending with transaction `done`, to the
/// committer, to become durable with the position after it.
fn hand_over(
    (updates, changed): (Vec<TableUpdate>, u64),
    done: &weir_connectors::postgres::Transaction,
    id: GlobalId,
    durable: &Durable,
    inflight: &mut VecDeque<InFlight>,
    position: &mut Option<u64>,
) {
    inflight.push_back(InFlight {
        write: durable.write_at_position(updates, Some((id, done.end_lsn))),
        end_lsn: done.end_lsn,
        committed_at: done.commit_time_micros,
        changed,
    });
    // Later retries resume after what was handed over: it becomes
    // durable unless the server stops (and then restarts from what is).
    *position = Some(done.end_lsn);
}

/// Per table, the rows a batch of transactions deletes and inserts.
struct Changes {
    inserts: Vec<Option<TextColumns>>,
    deletes: Vec<Option<TextColumns>>,
}

impl Changes {
    fn new(tables: usize) -> Changes {
        Changes {
            inserts: (0..tables).map(|_| None).collect(),
            deletes: (0..tables).map(|_| None).collect(),
        }
    }

    /// Table `t`'s inserts (`insert`) or deletes, started on first use.
    fn side(&mut self, t: usize, insert: bool, columns: usize) -> &mut TextColumns {
        let side = if insert {
            &mut self.inserts
        } else {
            &mut self.deletes
        };
        side[t].get_or_insert_with(|| TextColumns::new(columns))
    }

    /// The changes as table updates (a table's earlier versions get its
    /// first columns), and how many rows they change.
    fn finish(mut self, feeds: &[Feed]) -> Result<(Vec<TableUpdate>, u64), String> {
        let mut updates = Vec::new();
        let mut changed = 0u64;
        for (t, feed) in feeds.iter().enumerate() {
            for (rows, diff) in [(self.deletes[t].take(), -1), (self.inserts[t].take(), 1)] {
                let Some(rows) = rows else { continue };
                let batch = rows
                    .finish(&feed.schema)
                    .map_err(|e| format!("a change to {}: {e}", feed.upstream.qualified()))?;
                changed += batch.num_rows() as u64;
                feed.updates(batch, diff, &mut updates)?;
            }
        }
        Ok((updates, changed))
    }
}

/// Apply one upstream change, of the transaction ending at `end_lsn`, to
/// the tables' current rows and the batch.
fn apply(
    change: &Change,
    end_lsn: u64,
    feeds: &[Feed],
    rows: &mut [Rows],
    relations: &mut HashMap<u32, usize>,
    out: &mut Changes,
    undo: &mut Undo,
) -> Result<(), String> {
    let columns = |t: usize| feeds[t].upstream.columns.len();
    // The publication may cover more tables than the source takes:
    // changes to those are not this source's business.
    let table = |relations: &HashMap<u32, usize>, oid: u32| relations.get(&oid).copied();
    match change {
        Change::Relation(r) => {
            if let Some(i) = feed_of(feeds, r) {
                check_relation(&feeds[i], r, end_lsn)?;
                relations.insert(r.oid, i);
            }
        }
        Change::Insert { relation, new } => {
            let Some(t) = table(relations, *relation) else {
                return Ok(());
            };
            let fields = feeds[t].values(new);
            rows[t].add(&fields);
            undo.0.push((t, Undone::Added(Packed::row(columns(t), &fields))));
            out.side(t, true, columns(t)).push_row(fields);
        }
        Change::Update { relation, old, new } => {
            let Some(t) = table(relations, *relation) else {
                return Ok(());
            };
            let new_fields = feeds[t].values(new);
            // Without an old key the key did not change: the new row names it.
            let old_values = old.as_ref().map(|o| feeds[t].values(o));
            let old_key = old_values.as_deref().unwrap_or(&new_fields);
            let old_row = rows[t].take(old_key).ok_or_else(|| {
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
            let added = Packed::row(columns(t), &merged);
            out.side(t, false, columns(t)).push_row(old_fields);
            out.side(t, true, columns(t)).push_row(merged);
            // Undone latest first: the new row goes before the old returns.
            undo.0.push((t, Undone::Taken(old_row)));
            undo.0.push((t, Undone::Added(added)));
        }
        Change::Delete { relation, old } => {
            let Some(t) = table(relations, *relation) else {
                return Ok(());
            };
            let row = rows[t].take(&feeds[t].values(old)).ok_or_else(|| {
                format!(
                    "a delete of a row of {} that Weir does not have",
                    feeds[t].upstream.qualified()
                )
            })?;
            out.side(t, false, columns(t)).push_row(row.values());
            undo.0.push((t, Undone::Taken(row)));
        }
        Change::Truncate(oids) => {
            for oid in oids {
                let Some(t) = table(relations, *oid) else {
                    continue;
                };
                let side = out.side(t, false, columns(t));
                for row in rows[t].each() {
                    side.push_row(row.iter());
                }
                undo.0
                    .push((t, Undone::Cleared(std::mem::take(&mut rows[t].rows))));
            }
        }
    }
    Ok(())
}

/// What a batch did to the tables' current rows since its last
/// hand-over, to put back if the batch fails (see [`run`]).
#[derive(Default)]
struct Undo(Vec<(usize, Undone)>);

enum Undone {
    /// A row was added to the table.
    Added(Packed),
    /// A row was taken out of the table.
    Taken(Packed),
    /// The table was emptied; these were its rows.
    Cleared(hashbrown::HashTable<(Packed, u32)>),
}

impl Undo {
    fn clear(&mut self) {
        self.0.clear();
    }

    /// Put `rows` back as they were, latest change first.
    fn revert(self, rows: &mut [Rows]) {
        for (t, undone) in self.0.into_iter().rev() {
            match undone {
                Undone::Added(row) => {
                    rows[t].take(&row.values());
                }
                Undone::Taken(row) => rows[t].add(&row.values()),
                Undone::Cleared(all) => rows[t].rows = all,
            }
        }
    }
}

/// The feed an upstream relation description is about, if any.
fn feed_of(feeds: &[Feed], r: &weir_connectors::pgoutput::Relation) -> Option<usize> {
    feeds
        .iter()
        .position(|f| f.upstream.schema == r.namespace && f.upstream.name == r.name)
}

/// The tables `txn` describes with columns added at the end, each with
/// its widest description.
fn widenings(
    feeds: &[Feed],
    txn: &weir_connectors::postgres::Transaction,
) -> Result<Vec<(usize, weir_connectors::pgoutput::Relation)>, String> {
    let mut out: Vec<(usize, weir_connectors::pgoutput::Relation)> = Vec::new();
    for change in &txn.changes {
        if let Change::Relation(r) = change
            && let Some(i) = feed_of(feeds, r)
        {
            check_relation(&feeds[i], r, txn.end_lsn)?;
            if r.columns.len() > feeds[i].upstream.columns.len() {
                out.retain(|(j, _)| *j != i);
                out.push((i, r.clone()));
            }
        }
    }
    Ok(out)
}

/// Give feed `i`'s table its next version, with the columns `relation`
/// adds: the coordinator creates it holding the current rows (the added
/// columns at the value upstream gives existing rows) in one durable
/// step; earlier versions stay fed for the views that read them.
async fn widen(
    task: &Ingest,
    feeds: &mut [Feed],
    rows: &mut [Rows],
    i: usize,
    relation: &weir_connectors::pgoutput::Relation,
    end_lsn: u64,
) -> Result<(), String> {
    let names: Vec<String> = relation.columns[feeds[i].upstream.columns.len()..]
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let added = weir_connectors::postgres::added_columns(&task.config, relation.oid, &names, end_lsn)
        .await
        .map_err(|e| e.to_string())?;
    new_version(task, feeds, rows, i, added).await
}

/// Ask the coordinator for feed `i`'s table's next version, with columns
/// `added` (see [`widen`]).
async fn new_version(
    task: &Ingest,
    feeds: &mut [Feed],
    rows: &mut [Rows],
    i: usize,
    added: Vec<weir_connectors::postgres::UpstreamColumn>,
) -> Result<(), String> {
    let mut upstream = feeds[i].upstream.clone();
    upstream.columns.extend(added.iter().cloned());
    let extra: Vec<Option<&str>> = added.iter().map(|c| c.missing.as_deref()).collect();
    let mut current = TextColumns::new(upstream.columns.len());
    for row in rows[i].each() {
        current.push_row(row.iter().chain(extra.iter().copied()));
    }
    let (done, reply) = tokio::sync::oneshot::channel();
    task.widener
        .send(Widen {
            source: task.name.clone(),
            feed: i,
            upstream,
            rows: current,
            done,
        })
        .map_err(|_| "the server is stopping".to_string())?;
    feeds[i] = reply.await.map_err(|_| "the server is stopping".to_string())??;
    rows[i].widen(&extra);
    Ok(())
}

/// A request to the coordinator: give source `source`'s table of feed
/// `feed` its next version, described upstream as `upstream`, holding
/// `rows`; answered with the feed of the new version.
pub struct Widen {
    pub source: String,
    pub feed: usize,
    pub upstream: UpstreamTable,
    pub rows: TextColumns,
    pub done: tokio::sync::oneshot::Sender<Result<Feed, String>>,
}

/// Where ingestion sends [`Widen`] requests.
pub type Widener = tokio::sync::mpsc::UnboundedSender<Widen>;

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
    let confirmed = stream.confirmed_lsn();
    set(status, |s| {
        s.lsn_committed = confirmed;
        s.committed_at_micros = done.committed_at;
        s.rows += done.changed;
    });
}

/// An upstream table's new description still fits the source: every
/// column the source takes is there, in place, with its type (columns
/// added at the end make the table's next version). A description of the
/// transaction ending at `end_lsn` may lack columns added in that
/// transaction or later: it comes from before they existed.
fn check_relation(feed: &Feed, r: &weir_connectors::pgoutput::Relation, end_lsn: u64) -> Result<(), String> {
    let got: Vec<(&str, u32)> = r.columns.iter().map(|c| (c.name.as_str(), c.type_oid)).collect();
    check_columns(feed, &got, end_lsn)
}

/// [`check_relation`] for columns given by name and type.
fn check_columns(feed: &Feed, theirs: &[(&str, u32)], end_lsn: u64) -> Result<(), String> {
    let columns = &feed.upstream.columns;
    let before_added =
        theirs.len() < columns.len() && columns[theirs.len()..].iter().all(|c| c.added_in >= end_lsn);
    let expected: Vec<&str> = columns
        .iter()
        .take(if before_added { theirs.len() } else { columns.len() })
        .map(|c| c.name.as_str())
        .collect();
    let got: Vec<&str> = theirs.iter().map(|(name, _)| *name).collect();
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
        .zip(theirs)
        .find(|(mine, (_, oid))| mine.type_oid != 0 && mine.type_oid != *oid)
    {
        return Err(format!(
            "upstream table {} changed: column \"{}\" changed type; drop and re-create the source",
            feed.upstream.qualified(),
            col.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_connectors::pgoutput::Value;
    use weir_connectors::postgres::{UpstreamColumn, UpstreamTable};

    fn feed() -> Feed {
        let column = |name: &str, type_name: &str, type_oid: u32| UpstreamColumn {
            name: name.into(),
            type_name: type_name.into(),
            type_oid,
            not_null: false,
            missing: None,
            added_in: 0,
        };
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int32, false),
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Utf8, true),
        ]));
        Feed {
            upstream: UpstreamTable {
                oid: 7,
                schema: "public".into(),
                name: "t".into(),
                columns: vec![column("id", "integer", 23), column("v", "text", 25)],
                key: vec![0],
            },
            table: 1,
            name: "t".into(),
            schema,
            retired: Vec::new(),
        }
    }

    fn row(id: &str, v: &str) -> Vec<Value> {
        vec![Value::Text(id.into()), Value::Text(v.into())]
    }

    fn contents(rows: &Rows) -> Vec<Vec<Option<String>>> {
        let mut out: Vec<Vec<Option<String>>> = rows
            .each()
            .map(|r| r.iter().map(|v| v.map(str::to_string)).collect())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_failed_batch_leaves_the_rows_as_they_were() {
        let feeds = vec![feed()];
        let mut rows = vec![Rows::new(&feeds[0])];
        rows[0].add(&[Some("1"), Some("a")]);
        rows[0].add(&[Some("2"), Some("b")]);
        let before = contents(&rows[0]);
        let mut relations: HashMap<u32, usize> = [(7, 0)].into();
        let mut changes = Changes::new(1);
        let mut undo = Undo::default();
        let batch = [
            Change::Insert {
                relation: 7,
                new: row("3", "c"),
            },
            Change::Update {
                relation: 7,
                old: None,
                new: row("1", "x"),
            },
            Change::Delete {
                relation: 7,
                old: row("2", "b"),
            },
            Change::Truncate(vec![7]),
            Change::Insert {
                relation: 7,
                new: row("4", "d"),
            },
            Change::Update {
                relation: 7,
                old: None,
                new: row("4", "e"),
            },
            // Not there: the batch fails here.
            Change::Update {
                relation: 7,
                old: None,
                new: row("9", "z"),
            },
        ];
        let mut failed = None;
        for change in &batch {
            if let Err(e) = apply(
                change,
                1,
                &feeds,
                &mut rows,
                &mut relations,
                &mut changes,
                &mut undo,
            ) {
                failed = Some(e);
                break;
            }
        }
        assert!(failed.unwrap().contains("does not have"));
        assert_ne!(contents(&rows[0]), before);
        undo.revert(&mut rows);
        assert_eq!(contents(&rows[0]), before);
        // The rows are found by key again, as before the batch.
        assert!(rows[0].take(&[Some("1"), None]).is_some());
        assert!(rows[0].take(&[Some("3"), None]).is_none());
    }
}
