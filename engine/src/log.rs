//! A table's rows on one worker, kept as the Arrow batches that were
//! written, and the inputs of the dataflows that read the table.
//!
//! Tables used to be arranged like views: by the whole row, or by primary
//! key so that keyed writes could read their rows. Neither paid: a
//! dataflow importing the arrangement only flattened it back into a
//! collection, a peek read every row of it, keyed writes read their rows
//! from the coordinator's key index, and sorting each written row into the
//! arrangement was a third of a Nexmark run's time. So the log keeps this
//! worker's slice of each write as it came and sorts nothing. Each dataflow
//! that reads the table gets an input of its own, fed the log when the
//! dataflow is built and every write after; where the dataflow's first
//! step is a map or filter, the log evaluates it over its Arrow batches
//! as it feeds them ([`Prepare`]), so rows are encoded once, mapped.
//! Peeks read the log, cancelling deletions in a hash table when there
//! are any.
//!
//! A materialized view's output is kept the same way: its dataflow ends in
//! a sink ([`record_output`]) that appends each complete time's changes to
//! the view's log, so nothing sorts a view's rows either (an arrangement of
//! the output was a quarter of the workers' time in Nexmark q0). A
//! subscription to a logged relation as it stands (how every view's output
//! is recorded) is answered from the log directly, as Arrow batches,
//! without a dataflow.
//!
//! This module holds the rows and feeds the inputs; building, scheduling
//! and dropping dataflows is `compute`'s.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use differential_dataflow::input::InputSession;

use differential_dataflow::Hashable;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use weir_protocol::{Response, ResponseSender, SubscribeUpdate};

use crate::eval::{Evaluated, RowEval, encode_group};
use crate::render::{Coll, Errs, Input, OutputShape};
use crate::row::{Row, RowCodec, RowContainer};
use crate::{Diff, EngineError, Time};
use differential_dataflow::trace::implementations::BatchContainer;

/// Writes smaller than [`SMALL_ROWS`] are merged, this many rows to a
/// batch, when the log compacts, so that many single-row `INSERT`s do not
/// stay many batches.
const CHUNK_ROWS: usize = 64 * 1024;

/// Batches of at least this many rows stay as they are when the log
/// compacts: per batch, reads and merges cost next to nothing at this
/// size, and copying them into bigger ones cost more than anything else
/// the log does (a source's step split between two workers is two
/// batches of ~46,000 bids: merging them was 40% of Nexmark q1's CPU,
/// most of it the kernel zeroing the fresh pages copied into).
const SMALL_ROWS: usize = 4 * 1024;

/// A view's changes waiting for their time to complete are kept in
/// chunks of about this many bytes (see [`Unsettled`]).
const CHANGE_BYTES: usize = 1 << 20;

/// Deletions among at most this many settled rows are cancelled in line
/// rather than on a thread of their own.
const INLINE_ROWS: usize = 16 * 1024;

/// A dataflow's input of a table's rows.
pub type TableReader = InputSession<Time, Row, Diff>;

#[derive(Clone)]
struct Entry {
    batch: RecordBatch,
    time: Time,
    diff: Diff,
    /// Its time's changes were cancelled against each other before they
    /// were stored (a view's output, see [`TableLog::append_changes`]):
    /// no row of it is inserted or deleted again by another entry of its
    /// time, so a subscription has nothing to cancel there.
    net: bool,
}

/// A consolidation on its own thread (see [`TableLog::compact`]).
struct Consolidating {
    /// The entries at the front of the log that its result replaces.
    covers: usize,
    result: std::sync::mpsc::Receiver<Result<(Vec<Entry>, usize), EngineError>>,
}

/// A dataflow's input of a view's errors.
pub type ErrorReader = InputSession<Time, String, Diff>;

struct Reader {
    dataflow: usize,
    input: TableReader,
    errors: Option<ErrorReader>,
    prepare: Option<Prepare>,
}

/// A map and filter a dataflow applies first to a relation it reads,
/// which the log evaluates over its Arrow batches as it feeds them in
/// (see [`crate::render`]'s `MapFilterProject`).
pub struct Prepare {
    pub eval: RowEval,
    /// Encodes the evaluated rows.
    pub codec: RowCodec,
}

impl Prepare {
    /// Feed `batch`, mapped and filtered, into `rows` at `time` with
    /// `diff`; a row whose evaluation fails goes to `errors` instead.
    fn feed(
        &self,
        batch: &RecordBatch,
        time: Time,
        diff: Diff,
        rows: &mut TableReader,
        errors: &mut Option<ErrorReader>,
    ) {
        let (evaluated, failed) = evaluate_isolated(&self.eval, batch);
        let mut fail = |message: String| {
            if let Some(errors) = errors.as_mut() {
                errors.update_at(message, time, diff);
            }
        };
        for ev in evaluated {
            match encode_group(&self.codec, &ev, 0) {
                Ok(encoded) => encoded
                    .into_iter()
                    .for_each(|row| rows.update_at(row, time, diff)),
                Err(e) => (0..ev.kept.len()).for_each(|_| fail(e.clone())),
            }
        }
        failed.into_iter().for_each(fail);
    }
}

/// `eval` over `batch` ([`RowEval::eval_isolated`]): the evaluations,
/// and each failing row's error.
fn evaluate_isolated(eval: &RowEval, batch: &RecordBatch) -> (Vec<Evaluated>, Vec<String>) {
    let (full, partial, failed) = eval.eval_isolated(batch);
    let evaluated = full
        .into_iter()
        .chain(partial.into_iter().map(|(_, ev)| ev))
        .collect();
    (evaluated, failed.into_iter().map(|(_, e)| e).collect())
}

/// A materialized view that is a map and filter of one table alone, kept
/// without a dataflow: the table's log evaluates it over each batch it
/// stores and stores the result in the view's log (see
/// [`TableLog::derive`]).
struct Derived {
    view: Weak<RefCell<TableLog>>,
    /// The filters, and the view's columns as its one output group.
    eval: RowEval,
}

impl Derived {
    /// Keep `batch`'s mapped rows (or their errors) in the view's log.
    fn store(
        &self,
        view: &mut TableLog,
        batch: &RecordBatch,
        time: Time,
        diff: Diff,
    ) -> Result<(), EngineError> {
        let (evaluated, failed) = evaluate_isolated(&self.eval, batch);
        for ev in evaluated.into_iter().filter(|ev| !ev.kept.is_empty()) {
            let out = view.batch_of(&ev.outputs[0], ev.kept.len())?;
            view.store(out, None, time, diff, false)?;
        }
        if !failed.is_empty() {
            view.append_errors(failed.into_iter().map(|e| (e, time, diff)).collect());
        }
        Ok(())
    }
}

/// A subscription answered from the log (see [`TableLog::subscribe`]).
struct Subscriber {
    id: u64,
    as_of: Time,
    worker: usize,
    responses: ResponseSender,
    /// Entries appended since the last message.
    pending: Vec<Entry>,
    /// The upper last reported.
    reported: Time,
    failed: bool,
}

/// One worker's part of an unkeyed table (see the module comment).
pub struct TableLog {
    codec: RowCodec,
    /// A keyed table's key columns and their codec, to read rows by key.
    key: Option<(Vec<usize>, RowCodec)>,
    /// In the order written, so in time order.
    entries: Vec<Entry>,
    readers: Vec<Reader>,
    subscribers: Vec<Subscriber>,
    /// A view's errors (message, time, diff); a table has none.
    errors: Vec<(String, Time, Diff)>,
    /// Complete below this time: no append will come at an earlier one.
    upper: Time,
    view: bool,
    /// Only inserts ever reach this log (see [`crate::render::monotonic`]).
    append_only: bool,
    /// Entries left by the last compaction; the next one waits until the
    /// log has twice as many.
    compacted: usize,
    /// Rows left the last time deletions were cancelled.
    consolidated_rows: usize,
    consolidating: Option<Consolidating>,
    /// (settled entries, entries) when compaction last looked: until
    /// either changes there is nothing new to do.
    looked: (usize, usize),
    /// The latest time history may merge up to (see [`TableLog::compact`]):
    /// a view's log, complete only as its dataflow catches up, compacts
    /// again as it advances, not only when the next write allows it.
    allowed: Time,
    /// Views kept as a map and filter of this log alone.
    derived: Vec<Derived>,
}

impl TableLog {
    /// A materialized view's output (see [`record_output`]).
    pub fn view(codec: RowCodec) -> Self {
        TableLog {
            view: true,
            ..TableLog::new(codec, None)
        }
    }

    /// Whether this is a view's output, which may hold errors.
    pub fn is_view(&self) -> bool {
        self.view
    }

    /// Promise that only inserts will reach this log.
    pub fn set_append_only(&mut self) {
        self.append_only = true;
    }

    /// Whether only inserts ever reach this log.
    pub fn is_append_only(&self) -> bool {
        self.append_only
    }

    pub fn new(codec: RowCodec, key: Option<(Vec<usize>, RowCodec)>) -> Self {
        TableLog {
            codec,
            key,
            entries: Vec::new(),
            readers: Vec::new(),
            subscribers: Vec::new(),
            errors: Vec::new(),
            upper: 0,
            view: false,
            append_only: false,
            compacted: 0,
            consolidated_rows: 0,
            consolidating: None,
            looked: (0, 0),
            allowed: 0,
            derived: Vec::new(),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        self.codec.schema()
    }

    /// Keep this worker's part of a write, and hand it to every reader:
    /// the rows whose hash (of the key columns, or of every column for a
    /// table without a key) falls to worker `index` of `peers`; for an
    /// append-only table without a key, its share of the rows by
    /// position. A row and its later deletion hash alike, so each
    /// worker's part is a table in its own right, never holding a
    /// negative count, which reads and compaction rely on. (Slicing batches by position, as tables fed
    /// arrangements did, put an `UPDATE`'s deletion on one worker and the
    /// row it deletes on another.)
    pub fn write_part(
        &mut self,
        batch: RecordBatch,
        time: Time,
        diff: Diff,
        index: usize,
        peers: usize,
    ) -> Result<(), EngineError> {
        let batch = self.conform(batch)?;
        let part = if peers == 1 {
            batch
        } else if self.append_only && self.key.is_none() && diff > 0 {
            // Nothing will be deleted and nothing is read by key, so any
            // split is a partition: an even run of rows each, shared with
            // the batch rather than hashed and copied out of it.
            let n = batch.num_rows();
            let (from, to) = (n * index / peers, n * (index + 1) / peers);
            batch.slice(from, to - from)
        } else {
            let columns: Vec<ArrayRef> = match &self.key {
                Some((key, _)) => key.iter().map(|i| batch.column(*i).clone()).collect(),
                None => batch.columns().to_vec(),
            };
            let mut hashes = vec![0u64; batch.num_rows()];
            create_hashes(columns.iter(), &RandomState::with_seed(0), &mut hashes)
                .map_err(|e| EngineError::Encoding(e.to_string()))?;
            let peers = peers as u64;
            let mine = BooleanArray::from_iter(hashes.iter().map(|h| Some(h % peers == index as u64)));
            filter_record_batch(&batch, &mine).map_err(|e| EngineError::Encoding(e.to_string()))?
        };
        if part.num_rows() > 0 {
            self.append(part, time, diff)?;
        }
        Ok(())
    }

    /// [`TableLog::write_part`] on a lone worker.
    #[cfg(test)]
    fn write(&mut self, batch: RecordBatch, time: Time, diff: Diff) -> Result<(), EngineError> {
        self.write_part(batch, time, diff, 0, 1)?;
        self.advance(time + 1);
        Ok(())
    }

    /// Keep a view's output changes, all at times the view is complete
    /// through: rows cancelled where a time holds both insertions and
    /// deletions (there is nothing to cancel without both, nor where the
    /// changes are `net`: no row twice at a time), and stored in batches
    /// of one time and count.
    fn append_changes(&mut self, changes: Unsettled, net: bool) -> Result<(), EngineError> {
        let Unsettled { rows, errors } = changes;
        if !errors.is_empty() {
            self.append_errors(errors);
        }
        let mut rows = rows.into_iter().peekable();
        while let Some(((time, diff), first)) = rows.next() {
            let mut same = vec![(diff, first)];
            while let Some(((_, diff), next)) = rows.next_if(|((t, _), _)| *t == time) {
                same.push((diff, next));
            }
            debug_assert!(
                !net || {
                    let mut seen = std::collections::HashSet::new();
                    same.iter()
                        .flat_map(|(_, c)| c)
                        .all(|c| c.rows().all(|r| seen.insert(r)))
                },
                "a view's changes said to be net hold a row twice at a time"
            );
            let both = same.iter().any(|(d, _)| *d < 0) && same.iter().any(|(d, _)| *d > 0);
            if net || !both {
                for (diff, chunks) in &same {
                    self.store_chunks(chunks, time, *diff)?;
                }
                continue;
            }
            let mut counts: hashbrown::HashMap<&[u8], Diff> = hashbrown::HashMap::new();
            for (diff, chunks) in &same {
                for rows in chunks {
                    for row in rows.rows() {
                        *counts.entry(row).or_insert(0) += diff;
                    }
                }
            }
            let mut counted: Vec<(&[u8], Diff)> = counts.into_iter().filter(|(_, d)| *d != 0).collect();
            // Rows within a batch keep no order.
            counted.sort_unstable_by_key(|(_, d)| *d);
            for group in counted.chunk_by(|a, b| a.1 == b.1) {
                self.store_rows(group.iter().map(|(r, _)| *r), time, group[0].1)?;
            }
        }
        Ok(())
    }

    /// Keep the rows of `chunks` at `time` with count `diff`, several
    /// chunks to a batch, until the next would take it past
    /// [`CHUNK_ROWS`] rows (a chunk is never split). A chunk of wide
    /// rows alone is a batch under [`SMALL_ROWS`] (Nexmark q20's are
    /// ~2,500 rows of ~400 bytes), which compaction would copy once more
    /// into a bigger one: that copy was a quarter of the fresh pages q20's
    /// server zeroed.
    fn store_chunks(&mut self, chunks: &[RowContainer], time: Time, diff: Diff) -> Result<(), EngineError> {
        let mut rows: Vec<&[u8]> = Vec::new();
        for chunk in chunks {
            if !rows.is_empty() && rows.len() + chunk.len() > CHUNK_ROWS {
                self.store_rows(rows.iter().copied(), time, diff)?;
                rows.clear();
            }
            rows.extend(chunk.rows());
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.store_rows(rows.iter().copied(), time, diff)
    }

    /// Keep `rows` as one batch at `time` with count `diff`, each row's
    /// copy handed to the plain readers where there are any.
    fn store_rows<'a>(
        &mut self,
        rows: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
        time: Time,
        diff: Diff,
    ) -> Result<(), EngineError> {
        let batch = self.codec.decode(rows.clone())?;
        let plain = self.readers.iter().any(|r| r.prepare.is_none());
        let owned = plain.then(|| rows.map(Row::from).collect());
        self.store(batch, owned, time, diff, true)
    }

    fn append(&mut self, batch: RecordBatch, time: Time, diff: Diff) -> Result<(), EngineError> {
        self.store(batch, None, time, diff, false)
    }

    /// Keep `batch` (whose rows, encoded, are `rows` where known) and
    /// hand it to every reader and subscriber; `net` as [`Entry::net`].
    fn store(
        &mut self,
        batch: RecordBatch,
        rows: Option<Vec<Row>>,
        time: Time,
        diff: Diff,
        net: bool,
    ) -> Result<(), EngineError> {
        for s in &mut self.subscribers {
            s.pending.push(Entry {
                batch: batch.clone(),
                time,
                diff,
                net,
            });
        }
        let mut plain = self.readers.iter().filter(|r| r.prepare.is_none()).count();
        let mut rows = match rows {
            Some(rows) => rows,
            None if plain > 0 => self.codec.encode(batch.columns(), batch.num_rows())?,
            None => Vec::new(),
        };
        for reader in &mut self.readers {
            let Reader {
                input,
                errors,
                prepare,
                ..
            } = reader;
            match prepare {
                Some(p) => p.feed(&batch, time, diff, input, errors),
                None => {
                    plain -= 1;
                    if plain == 0 {
                        // The last plain reader takes the rows themselves.
                        std::mem::take(&mut rows)
                            .into_iter()
                            .for_each(|row| input.update_at(row, time, diff));
                    } else {
                        rows.iter()
                            .for_each(|row| input.update_at(row.clone(), time, diff));
                    }
                }
            }
        }
        self.derived.retain(|d| d.view.strong_count() > 0);
        for d in &self.derived {
            if let Some(view) = d.view.upgrade() {
                d.store(&mut view.borrow_mut(), &batch, time, diff)?;
            }
        }
        self.entries.push(Entry {
            batch,
            time,
            diff,
            net,
        });
        Ok(())
    }

    /// Keep the view whose log is `view` as `eval` (filters, then the
    /// view's columns) of this log's rows alone: what the log holds now
    /// (at `since` or later, as [`TableLog::attach`] feeds a dataflow),
    /// then every write, and this log's progress. Nothing runs in a
    /// dataflow: the view's rows are Arrow batches evaluated from Arrow
    /// batches.
    pub fn derive(
        &mut self,
        view: &Rc<RefCell<TableLog>>,
        eval: RowEval,
        since: Time,
    ) -> Result<(), EngineError> {
        let derived = Derived {
            view: Rc::downgrade(view),
            eval,
        };
        {
            let mut v = view.borrow_mut();
            for entry in &self.entries {
                derived.store(&mut v, &entry.batch, entry.time.max(since), entry.diff)?;
            }
            v.advance(self.upper);
        }
        self.derived.push(derived);
        Ok(())
    }

    /// The logs of the views kept from this one (see [`TableLog::derive`]).
    pub fn derived(&self) -> impl Iterator<Item = Rc<RefCell<TableLog>>> + '_ {
        self.derived.iter().filter_map(|d| d.view.upgrade())
    }

    /// Tell every reader that no write before `upper` will come.
    pub fn advance(&mut self, upper: Time) {
        if upper <= self.upper {
            return;
        }
        self.upper = upper;
        for reader in &mut self.readers {
            reader.input.advance_to(upper);
            reader.input.flush();
            if let Some(errors) = &mut reader.errors {
                errors.advance_to(upper);
                errors.flush();
            }
        }
        let (codec, errors) = (&self.codec, &self.errors);
        for s in &mut self.subscribers {
            s.report(codec, errors, upper);
        }
        for view in self.derived() {
            view.borrow_mut().advance(upper);
        }
    }

    /// Complete below this time.
    pub fn upper(&self) -> Time {
        self.upper
    }

    /// Keep a view's errors (complete times only, as rows are appended).
    fn append_errors(&mut self, errors: Vec<(String, Time, Diff)>) {
        for reader in &mut self.readers {
            if let Some(input) = &mut reader.errors {
                for (e, t, d) in &errors {
                    input.update_at(e.clone(), *t, *d);
                }
            }
        }
        self.errors.extend(errors);
        consolidate_errors(&mut self.errors);
    }

    /// The first error the log holds at `time`, if any.
    pub fn error_at(&self, time: Time) -> Option<String> {
        first_error(&self.errors, time)
    }

    /// Answer subscription `id` from the log: this worker's part of the
    /// relation at `as_of`, then every change, each message once the log
    /// is complete through its times (the messages of
    /// [`weir_protocol::Response::SubscribeBatch`]).
    pub fn subscribe(&mut self, id: u64, as_of: Time, worker: usize, responses: ResponseSender) {
        let mut s = Subscriber {
            id,
            as_of,
            worker,
            responses,
            pending: self.entries.clone(),
            reported: 0,
            failed: false,
        };
        let upper = self.upper;
        s.report(&self.codec, &self.errors, upper);
        self.subscribers.push(s);
    }

    /// Stop answering subscription `id`; true if the log answered it.
    pub fn unsubscribe(&mut self, id: u64) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|s| s.id != id);
        self.subscribers.len() < before
    }

    /// Start feeding `input`, an input of `dataflow`: everything the log
    /// holds (at `since` or later, as an arrangement compacted to `since`
    /// would present it), then every later write.
    /// `errors` is the input of a view's errors, where the dataflow reads
    /// a view.
    pub fn attach(&mut self, dataflow: usize, input: Input, since: Time) -> Result<(), EngineError> {
        let Input {
            rows: mut input,
            mut errors,
            prepare,
            ..
        } = input;
        for entry in &self.entries {
            let time = entry.time.max(since);
            match &prepare {
                Some(p) => p.feed(&entry.batch, time, entry.diff, &mut input, &mut errors),
                None => {
                    let rows = self.codec.encode(entry.batch.columns(), entry.batch.num_rows())?;
                    for row in rows {
                        input.update_at(row, time, entry.diff);
                    }
                }
            }
        }
        input.advance_to(self.upper);
        input.flush();
        if let Some(e) = &mut errors {
            for (message, t, d) in &self.errors {
                e.update_at(message.clone(), (*t).max(since), *d);
            }
            e.advance_to(self.upper);
            e.flush();
        }
        self.readers.push(Reader {
            dataflow,
            input,
            errors,
            prepare,
        });
        Ok(())
    }

    /// Stop feeding `dataflow` (it is being dropped).
    pub fn detach(&mut self, dataflow: usize) {
        self.readers.retain(|r| r.dataflow != dataflow);
    }

    /// The dataflows this table feeds.
    pub fn readers(&self) -> impl Iterator<Item = usize> + '_ {
        self.readers.iter().map(|r| r.dataflow)
    }

    /// The rows at `time`, every write at or before it applied: all of
    /// them, or (for a keyed table) those with one of `keys`, encoded as
    /// the key columns alone. Reading by key scans this worker's part of
    /// the table; the coordinator's key index answers the common cases.
    /// `columns` picks columns (see [`weir_protocol::Command::Peek`]).
    pub fn read(
        &self,
        time: Time,
        keys: Option<&[Vec<u8>]>,
        columns: Option<&[usize]>,
    ) -> Result<RecordBatch, String> {
        let upto = self.entries.partition_point(|e| e.time <= time);
        let entries = &self.entries[..upto];
        if keys.is_none() && columns.is_some_and(|c| c.is_empty()) {
            // `count(*)`: no row's count is ever negative here (see
            // `write_part`), so the entries' counts add up to the rows'
            // without cancelling any.
            let rows: i64 = entries
                .iter()
                .map(|e| e.diff as i64 * e.batch.num_rows() as i64)
                .sum();
            if rows < 0 {
                return Err("internal error: negative multiplicity".into());
            }
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows as usize));
            let schema = Arc::new(self.schema().project(&[]).map_err(|e| e.to_string())?);
            return RecordBatch::try_new_with_options(schema, vec![], &options).map_err(|e| e.to_string());
        }
        let inserts_only = entries.iter().all(|e| e.diff == 1);
        if keys.is_none()
            && let Some(columns) = columns
            && inserts_only
        {
            // Only the columns asked for are copied.
            let schema = Arc::new(self.schema().project(columns).map_err(|e| e.to_string())?);
            let parts = entries
                .iter()
                .map(|e| e.batch.project(columns))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            return concat_batches(&schema, &parts).map_err(|e| e.to_string());
        }
        let all = if inserts_only {
            concat_batches(self.schema(), entries.iter().map(|e| &e.batch)).map_err(|e| e.to_string())?
        } else {
            let consolidated = consolidate(&self.codec, entries).map_err(|e| e.to_string())?;
            let mut out = Gathered::default();
            for (row, diff) in consolidated.iter() {
                if diff < 0 {
                    return Err("internal error: negative multiplicity".into());
                }
                out.push(row, diff.unsigned_abs());
            }
            out.into_batch(&self.codec).map_err(|e| e.to_string())?
        };
        match (keys, &self.key) {
            (Some(keys), Some((key_columns, codec))) => {
                let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
                let key_columns: Vec<_> = key_columns.iter().map(|i| all.column(*i).clone()).collect();
                let encoded = codec
                    .encode(&key_columns, all.num_rows())
                    .map_err(|e| e.to_string())?;
                let keep = arrow::array::BooleanArray::from_iter(
                    encoded.iter().map(|k| Some(wanted.contains(k.as_slice()))),
                );
                let kept = arrow::compute::filter_record_batch(&all, &keep).map_err(|e| e.to_string())?;
                project(kept, columns)
            }
            _ => project(all, columns),
        }
    }

    /// [`TableLog::compact`] up to the latest time a write allowed: a view's
    /// log, complete only as its dataflow catches up, merges what it could
    /// not when the write came.
    pub fn compact_as_allowed(&mut self) -> Result<(), EngineError> {
        self.compact(self.allowed)
    }

    /// Let history before `since` merge. Once the rows at or before
    /// `since` have doubled since deletions were last cancelled, and some
    /// of them delete, the deletions cancel what they deleted. Otherwise,
    /// once the log has twice the entries it had after the last
    /// compaction, those writes become one time and small batches are
    /// merged. Cancelling
    /// touches every settled row, so it runs on a thread of its own (the
    /// worker goes on; a table of a million rows took ~0.9 s to cancel in
    /// line, stalling every view behind it) and its result replaces the
    /// entries it covered at a later compaction.
    pub fn compact(&mut self, since: Time) -> Result<(), EngineError> {
        self.allowed = self.allowed.max(since);
        // Entries stay in time order: a view's log that is behind the
        // latest write still gets appends below `since`, so what merges
        // goes no later than the log is complete.
        let since = since.min(self.upper.saturating_sub(1));
        if let Some(running) = &self.consolidating {
            match running.result.try_recv() {
                Ok(result) => {
                    let covers = running.covers;
                    self.consolidating = None;
                    let (entries, rows) = result?;
                    self.consolidated_rows = rows;
                    self.entries.splice(..covers, entries);
                    self.compacted = self.entries.len();
                }
                // Until it lands, the entries it covers stay as they are.
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.consolidating = None,
            }
        }
        let settled = self.entries.partition_point(|e| e.time <= since);
        if (settled, self.entries.len()) == self.looked {
            // Nothing settled or appended since the last look.
            return Ok(());
        }
        self.looked = (settled, self.entries.len());
        let rows: usize = self.entries[..settled].iter().map(|e| e.batch.num_rows()).sum();
        // Deletions are cancelled as soon as the rows double, however few
        // the entries: a view that caught up on a backlog in one time
        // holds all its churn in two or three.
        if self.entries[..settled].iter().any(|e| e.diff < 0) && rows >= 2 * self.consolidated_rows {
            if rows <= INLINE_ROWS {
                // Small (a grouped view's output): cheaper than a thread.
                let (entries, held) = consolidated(&self.codec, &self.entries[..settled], since)?;
                self.entries.splice(..settled, entries);
                self.consolidated_rows = held;
                self.compacted = self.entries.len();
                return Ok(());
            }
            let entries: Vec<Entry> = self.entries[..settled].to_vec();
            let codec = self.codec.duplicate();
            let (send, result) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("weir-table-log".into())
                .spawn(move || {
                    let _ = send.send(consolidated(&codec, &entries, since));
                })
                .map_err(|e| EngineError::Encoding(format!("cannot start a thread: {e}")))?;
            self.consolidating = Some(Consolidating {
                covers: settled,
                result,
            });
            return Ok(());
        }
        if self.entries.len() < (2 * self.compacted).max(32) {
            return Ok(());
        }
        let rest = self.entries.split_off(settled);
        let mut small: Vec<RecordBatch> = Vec::new();
        let mut small_diff = 1;
        for entry in std::mem::take(&mut self.entries) {
            if entry.batch.num_rows() >= SMALL_ROWS {
                self.entries.push(Entry {
                    time: since,
                    net: false,
                    ..entry
                });
                continue;
            }
            if entry.diff != small_diff {
                self.push_merged(&mut small, since, small_diff)?;
                small_diff = entry.diff;
            }
            small.push(entry.batch);
            if small.iter().map(|b| b.num_rows()).sum::<usize>() >= CHUNK_ROWS {
                self.push_merged(&mut small, since, small_diff)?;
            }
        }
        self.push_merged(&mut small, since, small_diff)?;
        self.entries.extend(rest);
        self.compacted = self.entries.len();
        Ok(())
    }

    /// Wait for a consolidation running on its own thread (tests).
    #[cfg(test)]
    fn settle(&mut self, since: Time) {
        while self.consolidating.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.compact(since).unwrap();
        }
    }

    fn push_merged(
        &mut self,
        small: &mut Vec<RecordBatch>,
        time: Time,
        diff: Diff,
    ) -> Result<(), EngineError> {
        if small.is_empty() {
            return Ok(());
        }
        let batch =
            concat_batches(self.schema(), small.iter()).map_err(|e| EngineError::Encoding(e.to_string()))?;
        small.clear();
        self.entries.push(Entry {
            batch,
            time,
            diff,
            net: false,
        });
        Ok(())
    }

    /// The batch with this table's schema: its columns cast where a
    /// writer's types differ, so that reads return the table's types.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, EngineError> {
        self.batch_of(batch.columns(), batch.num_rows())
    }

    /// `rows` rows of `columns` as a batch of this log's schema.
    fn batch_of(&self, columns: &[ArrayRef], rows: usize) -> Result<RecordBatch, EngineError> {
        let columns = self.codec.conform(columns)?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(self.schema().clone(), columns, &options)
            .map_err(|e| EngineError::Encoding(e.to_string()))
    }
}

/// End a view's dataflow: append each complete time's changes, `ok` rows
/// and `err` messages, to the view's `log`, and advance it. Unless
/// `shape` says they are local, changes go to the worker their row hashes
/// to first, so that each worker's part of the view never holds a
/// deletion without its row; unless it says they are net, each time's
/// changes are cancelled against each other before they are stored.
pub fn record_output<'s>(
    ok: Coll<'s>,
    err: Errs<'s>,
    log: Rc<RefCell<TableLog>>,
    name: &str,
    shape: OutputShape,
) {
    let OutputShape { local, net } = shape;
    let updates = ok.map(Ok::<Row, String>).concat(err.map(Err));
    let name = format!("Record {name}");
    let mut unsettled = Unsettled::default();
    // A local view's changes stay where they are (routed to this worker).
    let me = updates.inner.scope().index() as u64;
    let route = Exchange::new(
        move |(r, _, _): &(Result<Row, String>, Time, Diff)| {
            if local { me } else { r.hashed() }
        },
    );
    updates.inner.sink(route, &name, move |(input, frontier)| {
        input.for_each(|_cap, data| unsettled.take(data));
        // An empty frontier (a view of constants): complete for good.
        let upper = frontier.frontier().iter().min().copied().unwrap_or(Time::MAX);
        let mut log = log.borrow_mut();
        if upper <= log.upper() {
            return;
        }
        if let Err(e) = log.append_changes(unsettled.split_before(upper), net) {
            tracing::warn!(error = %e, "cannot keep a view's output");
        }
        log.advance(upper);
        // History the last write allowed to merge but that was not yet
        // complete here may merge now: otherwise a view that catches up
        // after its sources go quiet keeps every change it made until
        // the next write, and the first read cancels them all.
        if let Err(e) = log.compact_as_allowed() {
            tracing::warn!(error = %e, "cannot compact a view's output");
        }
    });
}

/// A view's changes at times not yet complete, by time and count, each
/// row's bytes end to end in chunks of about [`CHANGE_BYTES`]. The rows
/// themselves are dropped as they arrive, so that the next ones made
/// reuse their memory: a time of Nexmark q18 is 1.4 M changes per worker,
/// and holding each as a row of its own until the time was complete made
/// them the largest share of the fresh pages the kernel zeroed. Chunks,
/// not one buffer, because a buffer that doubles as it grows copies
/// itself into fresh pages at every doubling ([`TableLog::store_chunks`]
/// decodes several chunks to a batch).
#[derive(Default)]
struct Unsettled {
    rows: std::collections::BTreeMap<(Time, Diff), Vec<RowContainer>>,
    errors: Vec<(String, Time, Diff)>,
}

impl Unsettled {
    /// Keep `data`'s changes, emptying it.
    fn take(&mut self, data: &mut Vec<(Result<Row, String>, Time, Diff)>) {
        let Unsettled { rows: all, errors } = self;
        let mut rest = &data[..];
        while let Some((_, time, diff)) = rest.first() {
            // Changes come in runs of one time and count.
            let n = rest.iter().take_while(|(_, t, d)| (t, d) == (time, diff)).count();
            let (run, later) = rest.split_at(n);
            rest = later;
            if run.iter().any(|(r, _, _)| r.is_err()) {
                errors.extend(
                    run.iter()
                        .filter_map(|(r, t, d)| Some((r.as_ref().err()?.clone(), *t, *d))),
                );
            }
            if run.iter().any(|(r, _, _)| r.is_ok()) {
                let chunks = all.entry((*time, *diff)).or_default();
                for r in run.iter().filter_map(|(r, _, _)| r.as_ref().ok()) {
                    match chunks.last_mut() {
                        Some(c) if c.bytes_in_use().0 + r.len() <= c.bytes_in_use().1 => c.push_ref(r),
                        _ => {
                            let mut c =
                                RowContainer::with_capacities(CHANGE_BYTES / 64, CHANGE_BYTES.max(r.len()));
                            c.push_ref(r);
                            chunks.push(c);
                        }
                    }
                }
            }
        }
        data.clear();
    }

    /// The changes at times before `upper`, taken out.
    fn split_before(&mut self, upper: Time) -> Unsettled {
        let later = self.rows.split_off(&(upper, Diff::MIN));
        let (errors, keep) = std::mem::take(&mut self.errors)
            .into_iter()
            .partition(|(_, t, _)| *t < upper);
        self.errors = keep;
        Unsettled {
            rows: std::mem::replace(&mut self.rows, later),
            errors,
        }
    }
}

impl Subscriber {
    /// Send what was appended since the last message, complete below
    /// `upper` (times before `as_of` become `as_of`, cancelled where they
    /// meet), or the first error the relation holds.
    fn report(&mut self, codec: &RowCodec, errors: &[(String, Time, Diff)], upper: Time) {
        if self.failed || upper <= self.reported {
            return;
        }
        self.reported = upper;
        let (tx, id, worker) = (&self.responses, self.id, self.worker);
        let send = |upper: Option<Time>, update: Result<Vec<SubscribeUpdate>, String>| {
            let _ = tx.send(Response::SubscribeBatch {
                subscribe_id: id,
                worker,
                upper,
                update,
            });
        };
        if let Some(e) = first_error(errors, upper - 1) {
            self.failed = true;
            return send(None, Err(e));
        }
        let entries: Vec<Entry> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|e| Entry {
                time: e.time.max(self.as_of),
                // Times before `as_of` become one: their changes meet.
                net: e.net && e.time >= self.as_of,
                ..e
            })
            .collect();
        match changes(codec, &entries) {
            Ok(update) => send(Some(upper), Ok(update)),
            Err(e) => {
                self.failed = true;
                send(None, Err(e.to_string()))
            }
        }
    }
}

/// `entries` (in time order) as one subscription message: where a time
/// holds deletions, its rows are cancelled against each other first,
/// unless they already were.
/// Batches are shared with the log, never concatenated: copying a view's
/// whole output once more was a tenth of Nexmark q1's CPU.
fn changes(codec: &RowCodec, entries: &[Entry]) -> Result<Vec<SubscribeUpdate>, EngineError> {
    let mut parts = Vec::new();
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|e| e.time == first.time).count();
        let (same, later) = rest.split_at(n);
        rest = later;
        let cancel = same.iter().any(|e| e.diff < 0) && same.len() > 1 && !same.iter().all(|e| e.net);
        let same = if cancel {
            let consolidated = consolidate(codec, same)?;
            let (rows, counts): (Vec<&[u8]>, Vec<Diff>) = consolidated.iter().unzip();
            if rows.is_empty() {
                continue;
            }
            let batch = codec.decode(rows.into_iter())?;
            vec![(batch, counts)]
        } else {
            same.iter()
                .map(|e| (e.batch.clone(), vec![e.diff; e.batch.num_rows()]))
                .collect()
        };
        parts.extend(same.into_iter().map(|(batch, counts)| SubscribeUpdate {
            times: vec![first.time; batch.num_rows()],
            diffs: counts.into_iter().map(|d| d as i64).collect(),
            batch,
        }));
    }
    Ok(parts)
}

/// Sum equal (message, time) errors and drop those that cancel.
fn consolidate_errors(errors: &mut Vec<(String, Time, Diff)>) {
    differential_dataflow::consolidation::consolidate_updates(errors);
}

/// The first error (in message order) with a positive count at `time`.
fn first_error(errors: &[(String, Time, Diff)], time: Time) -> Option<String> {
    let mut counts: std::collections::BTreeMap<&str, Diff> = std::collections::BTreeMap::new();
    for (e, t, d) in errors {
        if *t <= time {
            *counts.entry(e.as_str()).or_insert(0) += d;
        }
    }
    counts
        .into_iter()
        .find(|(_, c)| *c > 0)
        .map(|(e, _)| e.to_string())
}

/// Rows and their multiplicities, gathered to be decoded at once.
#[derive(Default)]
struct Gathered<'a> {
    rows: Vec<&'a [u8]>,
    /// For each output row, its index in `rows` (repeated rows repeat).
    take: Vec<u32>,
}

impl<'a> Gathered<'a> {
    /// `row`, `count` times.
    fn push(&mut self, row: &'a [u8], count: usize) {
        if count > 0 {
            self.take
                .extend(std::iter::repeat_n(self.rows.len() as u32, count));
            self.rows.push(row);
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn into_batch(self, codec: &RowCodec) -> Result<RecordBatch, EngineError> {
        let batch = codec.decode(self.rows.into_iter())?;
        if self.take.len() == batch.num_rows() {
            return Ok(batch);
        }
        arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(self.take))
            .map_err(|e| EngineError::Encoding(e.to_string()))
    }
}

/// `batch` with only `columns`, where given.
fn project(batch: RecordBatch, columns: Option<&[usize]>) -> Result<RecordBatch, String> {
    match columns {
        Some(columns) => batch.project(columns).map_err(|e| e.to_string()),
        None => Ok(batch),
    }
}

/// The distinct rows of some entries with their net counts (non-zero).
struct Consolidated {
    /// Each entry's rows, encoded.
    encoded: Vec<arrow::row::Rows>,
    /// Each distinct row (entry, row within it) where first seen, and its
    /// net count.
    net: Vec<((u32, u32), Diff)>,
    /// For a relation without columns (every row the empty row): the net
    /// count of rows.
    empty: Diff,
}

impl Consolidated {
    fn iter(&self) -> impl Iterator<Item = (&[u8], Diff)> {
        let empty = (self.empty != 0).then_some((&[][..], self.empty));
        self.net
            .iter()
            .filter(|(_, d)| *d != 0)
            .map(|((e, r), d)| (self.encoded[*e as usize].row(*r as usize).data(), *d))
            .chain(empty)
    }
}

/// The rows of `entries` with their net counts, summed in a hash table
/// rather than sorted: a keyed table updated in place cancels most of its
/// log this way at a fraction of a sort's cost. Rows are encoded into one
/// buffer per entry and the table holds indexes, so that a million rows
/// cost no million allocations (nor the fresh pages they would touch).
fn consolidate(codec: &RowCodec, entries: &[Entry]) -> Result<Consolidated, EngineError> {
    use std::hash::BuildHasher;
    let mut out = Consolidated {
        encoded: Vec::with_capacity(entries.len()),
        net: Vec::new(),
        empty: 0,
    };
    let hasher = hashbrown::DefaultHashBuilder::default();
    let mut table: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
    for entry in entries {
        let Some(rows) = codec.encode_rows(entry.batch.columns())? else {
            out.empty += entry.diff * entry.batch.num_rows() as Diff;
            continue;
        };
        let e = out.encoded.len() as u32;
        for (r, row) in rows.iter().enumerate() {
            let row = row.data();
            let hash = hasher.hash_one(row);
            let (encoded, net) = (&out.encoded, &mut out.net);
            // The bytes of distinct row `i`, which may be in this entry's
            // rows, not yet among `encoded`.
            let held = |net: &[((u32, u32), Diff)], i: u32| {
                let ((se, sr), _) = net[i as usize];
                let part = if se == e { &rows } else { &encoded[se as usize] };
                part.row(sr as usize)
            };
            match table.find(hash, |i| held(net, *i).data() == row) {
                Some(i) => net[*i as usize].1 += entry.diff,
                None => {
                    net.push(((e, r as u32), entry.diff));
                    let i = (net.len() - 1) as u32;
                    table.insert_unique(hash, i, |i| hasher.hash_one(held(net, *i).data()));
                }
            }
        }
        out.encoded.push(rows);
    }
    Ok(out)
}

/// `entries` with each deletion cancelling what it deleted, as at most
/// two entries at `since` (insertions, and deletions of rows the log does
/// not hold, which only a bug would write), with the rows they hold.
fn consolidated(
    codec: &RowCodec,
    entries: &[Entry],
    since: Time,
) -> Result<(Vec<Entry>, usize), EngineError> {
    let consolidated = consolidate(codec, entries)?;
    let mut out = Vec::new();
    for sign in [1, -1] {
        let mut gathered = Gathered::default();
        for (row, diff) in consolidated.iter().filter(|(_, d)| d.signum() == sign) {
            gathered.push(row, diff.unsigned_abs());
        }
        if !gathered.is_empty() {
            out.push(Entry {
                batch: gathered.into_batch(codec)?,
                time: since,
                diff: sign as Diff,
                net: false,
            });
        }
    }
    let held = out.iter().map(|e| e.batch.num_rows()).sum();
    Ok((out, held))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    impl TableLog {
        /// [`TableLog::append_changes`] of `updates`, kept as a view's
        /// sink keeps them.
        fn append_updates(
            &mut self,
            mut updates: Vec<(Result<Row, String>, Time, Diff)>,
            net: bool,
        ) -> Result<(), EngineError> {
            let mut unsettled = Unsettled::default();
            unsettled.take(&mut updates);
            self.append_changes(unsettled.split_before(Time::MAX), net)
        }
    }

    /// `(a bigint, b text)`, both nullable.
    fn nullable_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    fn batch(schema: &SchemaRef, rows: &[(i64, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn sorted(batch: &RecordBatch) -> Vec<(i64, String)> {
        let a = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let b = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let mut rows: Vec<_> = (0..batch.num_rows())
            .map(|i| (a.value(i), b.value(i).to_string()))
            .collect();
        rows.sort();
        rows
    }

    /// A view's changes as its sink keeps them: in pieces at interleaved
    /// times, errors among them, a row too long for a chunk of its own
    /// size, insertions and deletions that cancel within their time, and
    /// a row inserted twice; each time stored once complete, and only its
    /// changes.
    #[test]
    fn unsettled_changes_are_stored_by_time() {
        let schema = nullable_schema();
        let codec = RowCodec::new(schema.clone()).unwrap();
        let rows = |rows: &[(i64, &str)]| {
            let b = batch(&schema, rows);
            codec.encode(b.columns(), b.num_rows()).unwrap()
        };
        let long = "l".repeat(CHANGE_BYTES + 1);
        let [a, b, c, d, l]: [Row; 5] = rows(&[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, &long)])
            .try_into()
            .unwrap();
        let mut view = TableLog::view(RowCodec::new(schema.clone()).unwrap());
        let mut unsettled = Unsettled::default();
        let mut data = vec![
            (Ok(a.clone()), 1, 1),
            (Ok(c.clone()), 2, 1),
            (Err("boom".to_string()), 1, 1),
            (Ok(a.clone()), 2, -1),
        ];
        unsettled.take(&mut data);
        assert!(data.is_empty());
        unsettled.take(&mut vec![
            (Ok(b.clone()), 1, 1),
            (Ok(l.clone()), 2, 1),
            (Ok(d.clone()), 2, 1),
            (Ok(d.clone()), 2, 1),
            (Ok(c.clone()), 2, -1),
            (Ok(a.clone()), 2, 1),
        ]);
        view.append_changes(unsettled.split_before(2), false).unwrap();
        view.advance(2);
        assert_eq!(
            sorted(&view.read(1, None, None).unwrap()),
            vec![(1, "a".into()), (2, "b".into())]
        );
        assert_eq!(view.error_at(1), Some("boom".to_string()));
        // Time 2's changes stayed behind; at 2 they hold `a` as it was
        // (deleted and inserted), `c` not at all, `d` twice.
        assert_eq!(unsettled.rows.keys().map(|(t, _)| *t).min(), Some(2));
        let entries = view.entries.len();
        view.append_changes(unsettled.split_before(3), false).unwrap();
        view.advance(3);
        assert!(unsettled.rows.is_empty() && unsettled.errors.is_empty());
        assert!(view.entries[entries..].iter().all(|e| e.diff > 0));
        let at_2 = sorted(&view.read(2, None, None).unwrap());
        assert_eq!(
            at_2.iter().map(|(k, v)| (*k, v.len())).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (4, 1), (4, 1), (5, CHANGE_BYTES + 1)]
        );
    }

    /// A time's wide rows fill many chunks, each alone a batch under
    /// [`SMALL_ROWS`]: they are stored a few batches of up to
    /// [`CHUNK_ROWS`] rows, none of them left for compaction to copy.
    #[test]
    fn chunks_of_wide_rows_are_stored_together() {
        let schema = nullable_schema();
        let codec = RowCodec::new(schema.clone()).unwrap();
        let wide = "w".repeat(300);
        const N: usize = 70_000;
        let values: Vec<(i64, &str)> = (0..N as i64).map(|i| (i, wide.as_str())).collect();
        let b = batch(&schema, &values);
        let mut updates: Vec<_> = codec
            .encode(b.columns(), N)
            .unwrap()
            .into_iter()
            .map(|r| (Ok(r), 1, 1))
            .collect();
        let mut unsettled = Unsettled::default();
        unsettled.take(&mut updates);
        let chunk_rows = unsettled.rows.values().next().unwrap()[0].len();
        assert!(chunk_rows < SMALL_ROWS, "a chunk holds {chunk_rows} rows");
        let mut view = TableLog::view(codec.duplicate());
        view.append_changes(unsettled.split_before(2), true).unwrap();
        view.advance(2);
        let sizes: Vec<usize> = view.entries.iter().map(|e| e.batch.num_rows()).collect();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(
            sizes[0] <= CHUNK_ROWS && sizes[0] > CHUNK_ROWS - chunk_rows,
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), N);
        let read = sorted(&view.read(1, None, None).unwrap());
        assert_eq!(read.len(), N);
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, (k, v))| *k == i as i64 && v == &wide)
        );
    }

    /// A view kept by its table's log: the rows already written and every
    /// later write, mapped and filtered, the table's progress, a row
    /// that fails as the view's error (its batch-mates kept), and nothing
    /// more once the view's log is dropped.
    #[test]
    fn a_derived_view_follows_its_table() {
        use datafusion::common::DFSchema;
        use datafusion::logical_expr::{col, lit};
        let schema = nullable_schema();
        let mut table = TableLog::new(RowCodec::new(schema.clone()).unwrap(), None);
        table.write(batch(&schema, &[(1, "x"), (2, "y")]), 1, 1).unwrap();
        // The view: `SELECT 10 / a AS a, b FROM t WHERE a >= 0`.
        let df = DFSchema::try_from_qualified_schema("t", &schema).unwrap();
        let eval = RowEval::new(
            &df,
            &[col("t.a").gt_eq(lit(0i64))],
            &[&[(lit(10i64) / col("t.a")).alias("a"), col("t.b")]],
        )
        .unwrap();
        let view = Rc::new(RefCell::new(TableLog::view(
            RowCodec::new(schema.clone()).unwrap(),
        )));
        table.derive(&view, eval, 0).unwrap();
        assert_eq!(view.borrow().upper(), 2);
        assert_eq!(
            sorted(&view.borrow().read(1, None, None).unwrap()),
            vec![(5, "y".into()), (10, "x".into())]
        );
        // A deletion; a row the filter drops, one it keeps, and one that
        // divides by zero: the view's error at that time, its batch-mates
        // kept all the same.
        table.write(batch(&schema, &[(2, "y")]), 2, -1).unwrap();
        table
            .write(batch(&schema, &[(-1, "n"), (5, "z"), (0, "e")]), 3, 1)
            .unwrap();
        assert_eq!(view.borrow().upper(), 4);
        assert_eq!(
            sorted(&view.borrow().read(2, None, None).unwrap()),
            vec![(10, "x".into())]
        );
        assert_eq!(view.borrow().error_at(2), None);
        assert_eq!(
            sorted(&view.borrow().read(3, None, None).unwrap()),
            vec![(2, "z".into()), (10, "x".into())]
        );
        assert_eq!(view.borrow().error_at(3).as_deref(), Some("division by zero"));
        drop(view);
        table.write(batch(&schema, &[(7, "w")]), 4, 1).unwrap();
        assert_eq!(table.derived().count(), 0);
    }

    /// Reads at each time see exactly the writes up to it, before and
    /// after compaction, duplicates and deletions included.
    #[test]
    fn reads_see_the_writes_up_to_their_time() {
        let schema = nullable_schema();
        let mut log = TableLog::new(RowCodec::new(schema.clone()).unwrap(), None);
        // 60 single-row inserts, a duplicate, then deletions of some.
        const N: i64 = 60;
        for i in 0..N {
            log.write(batch(&schema, &[(i, "x")]), i as Time, 1).unwrap();
        }
        log.write(batch(&schema, &[(3, "x")]), N as Time, 1).unwrap();
        log.write(batch(&schema, &[(3, "x"), (5, "x")]), N as Time + 1, -1)
            .unwrap();
        let expect = |upto: i64| -> Vec<(i64, String)> {
            let mut rows: Vec<_> = (0..N.min(upto + 1)).map(|i| (i, "x".to_string())).collect();
            if upto >= N {
                rows.push((3, "x".into()));
            }
            if upto > N {
                rows.retain(|r| r.0 != 5);
                let i = rows.iter().position(|r| r.0 == 3).unwrap();
                rows.remove(i);
            }
            rows.sort();
            rows
        };
        let times = [0, 7, 20, 39, N, N + 1];
        for t in times {
            assert_eq!(
                sorted(&log.read(t as Time, None, None).unwrap()),
                expect(t),
                "at {t}"
            );
        }
        log.compact(20).unwrap();
        assert_eq!(
            log.entries.len(),
            1 + (N as usize - 21) + 2,
            "the 21 writes up to 20 merged"
        );
        for t in &times[2..] {
            assert_eq!(
                sorted(&log.read(*t as Time, None, None).unwrap()),
                expect(*t),
                "at {t} after compacting to 20"
            );
        }
        log.compacted = 0;
        log.compact(N as Time + 1).unwrap();
        log.settle(N as Time + 1);
        assert_eq!(
            sorted(&log.read(N as Time + 1, None, None).unwrap()),
            expect(N + 1)
        );
        // The deletion cancelled what it deleted: one batch, each row once.
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.entries[0].batch.num_rows(), N as usize - 1);
    }

    /// A log of a few big entries (a view that caught up on a backlog in
    /// one time) cancels its deletions once its rows double, however few
    /// the entries; `count(*)` reads the net count before and after.
    #[test]
    fn few_entries_with_deletions_are_cancelled() {
        let schema = nullable_schema();
        let mut log = TableLog::new(RowCodec::new(schema.clone()).unwrap(), None);
        let all: Vec<(i64, &str)> = (0..1_000).map(|i| (i, "x")).collect();
        log.write(batch(&schema, &all), 1, 1).unwrap();
        log.write(batch(&schema, &all[..600]), 2, -1).unwrap();
        log.write(batch(&schema, &[(7, "y")]), 2, 1).unwrap();
        assert_eq!(log.read(2, None, Some(&[])).unwrap().num_rows(), 401);
        log.compact(2).unwrap();
        log.settle(2);
        assert_eq!(log.entries.len(), 1, "the deletions cancelled what they deleted");
        assert_eq!(log.entries[0].batch.num_rows(), 401);
        assert_eq!(log.read(2, None, Some(&[])).unwrap().num_rows(), 401);
        let mut expect: Vec<(i64, String)> = (600..1_000).map(|i| (i, "x".to_string())).collect();
        expect.push((7, "y".into()));
        expect.sort();
        assert_eq!(sorted(&log.read(2, None, None).unwrap()), expect);
    }

    /// Compaction merges small writes but leaves big ones as written: the
    /// same buffers, not copies.
    #[test]
    fn compaction_leaves_big_batches_uncopied() {
        let schema = nullable_schema();
        let mut log = TableLog::new(RowCodec::new(schema.clone()).unwrap(), None);
        let rows: Vec<(i64, &str)> = (0..SMALL_ROWS as i64).map(|i| (i, "y")).collect();
        let mut written = Vec::new();
        for t in 0..40 {
            let b = if t % 2 == 0 {
                batch(&schema, &rows)
            } else {
                batch(&schema, &[(t, "x")])
            };
            written.push(b.clone());
            log.write(b, t as Time, 1).unwrap();
        }
        log.compact(39).unwrap();
        let big: Vec<&Entry> = log
            .entries
            .iter()
            .filter(|e| e.batch.num_rows() == SMALL_ROWS)
            .collect();
        assert_eq!(big.len(), 20, "every big write is an entry of its own");
        for (e, w) in big.iter().zip(written.iter().step_by(2)) {
            assert!(
                e.batch.column(1).to_data().buffers()[1].as_ptr()
                    == w.column(1).to_data().buffers()[1].as_ptr(),
                "a big write was copied"
            );
        }
        assert_eq!(log.entries.len(), 21, "the 20 single rows merged into one batch");
        assert_eq!(log.read(39, None, None).unwrap().num_rows(), 20 * SMALL_ROWS + 20);
    }

    /// A keyed table's log answers reads by key, after updates in place
    /// and after compaction cancelled them.
    #[test]
    fn reads_by_key_see_the_latest_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]));
        let key_schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let key_codec = RowCodec::new(key_schema.clone()).unwrap();
        let key = |k: i64| -> Vec<u8> {
            key_codec
                .encode(&[Arc::new(Int64Array::from(vec![k]))], 1)
                .unwrap()
                .remove(0)
                .to_vec()
        };
        let mut log = TableLog::new(
            RowCodec::new(schema.clone()).unwrap(),
            Some((vec![0], RowCodec::new(key_schema).unwrap())),
        );
        log.write(batch(&schema, &[(1, "a"), (2, "b1"), (3, "c")]), 1, 1)
            .unwrap();
        for t in 2..40 {
            // Row 2 rewritten at every time.
            log.write(batch(&schema, &[(2, &format!("b{}", t - 1))]), t, -1)
                .unwrap();
            log.write(batch(&schema, &[(2, &format!("b{t}"))]), t, 1).unwrap();
        }
        let b = |s: &str| s.to_string();
        assert_eq!(
            sorted(&log.read(5, Some(&[key(2)]), None).unwrap()),
            vec![(2, b("b5"))]
        );
        for compacted_to in [None, Some(30), Some(39)] {
            if let Some(since) = compacted_to {
                log.compacted = 0;
                log.compact(since).unwrap();
                log.settle(since);
            }
            assert_eq!(
                sorted(&log.read(39, Some(&[key(2), key(3), key(9)]), None).unwrap()),
                vec![(2, b("b39")), (3, b("c"))],
                "{compacted_to:?}"
            );
            assert_eq!(sorted(&log.read(39, Some(&[]), None).unwrap()), vec![]);
            assert_eq!(sorted(&log.read(39, None, None).unwrap()).len(), 3);
        }
    }

    /// Workers split a write between them, and a deletion goes to the
    /// worker that holds the row it deletes.
    #[test]
    fn each_worker_holds_its_own_part() {
        let schema = nullable_schema();
        let rows: Vec<(i64, String)> = (0..100).map(|i| (i, format!("r{}", i % 7))).collect();
        let refs: Vec<(i64, &str)> = rows.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let mut parts: Vec<TableLog> = (0..3)
            .map(|_| TableLog::new(RowCodec::new(schema.clone()).unwrap(), None))
            .collect();
        for (index, log) in parts.iter_mut().enumerate() {
            log.write_part(batch(&schema, &refs), 1, 1, index, 3).unwrap();
            log.write_part(batch(&schema, &refs[10..20]), 2, -1, index, 3)
                .unwrap();
        }
        let mut all = Vec::new();
        for log in &parts {
            let part = sorted(&log.read(2, None, None).unwrap());
            assert!(part.len() < 90, "spread over the workers: {}", part.len());
            all.extend(part);
        }
        all.sort();
        let mut expect = rows.clone();
        expect.drain(10..20);
        assert_eq!(all, expect);
    }

    /// A view's log: changes cancel where a deletion meets its row, reads
    /// and a subscription answered from the log see each complete time,
    /// and an error is reported to both.
    #[test]
    fn a_views_log_answers_reads_and_subscriptions() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let codec = RowCodec::new(schema.clone()).unwrap();
        let rows = |rows: &[(i64, &str)]| codec.encode(batch(&schema, rows).columns(), rows.len()).unwrap();
        let mut log = TableLog::view(RowCodec::new(schema.clone()).unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let update = |r: &Row, t: Time, d: Diff| (Ok(r.clone()), t, d);
        let (x, y, z) = (rows(&[(1, "x")]), rows(&[(2, "y")]), rows(&[(3, "z")]));
        // Time 1: x twice, y; time 2: one x and y out, z in, and an x that
        // comes and goes within the time.
        log.append_updates(vec![update(&x[0], 1, 2), update(&y[0], 1, 1)], false)
            .unwrap();
        log.advance(2);
        log.subscribe(7, 1, 0, tx);
        log.append_updates(
            vec![
                update(&x[0], 2, -1),
                update(&y[0], 2, -1),
                update(&z[0], 2, 1),
                update(&x[0], 2, 1),
                update(&x[0], 2, -1),
            ],
            false,
        )
        .unwrap();
        log.advance(3);
        assert_eq!(
            sorted(&log.read(1, None, None).unwrap()),
            vec![(1, "x".into()), (1, "x".into()), (2, "y".into())]
        );
        assert_eq!(
            sorted(&log.read(2, None, None).unwrap()),
            vec![(1, "x".into()), (3, "z".into())]
        );
        assert_eq!(log.read(2, None, Some(&[])).unwrap().num_rows(), 2);
        let mut got: Vec<(i64, String, Time, i64)> = Vec::new();
        let mut uppers = Vec::new();
        while let Ok(Response::SubscribeBatch { upper, update, .. }) = rx.try_recv() {
            uppers.push(upper);
            for u in update.unwrap() {
                let pairs = sorted(&u.batch);
                // `sorted` reorders rows: pair each row with its time and diff first.
                let a = u.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..u.batch.num_rows() {
                    let row = pairs.iter().find(|p| p.0 == a.value(i)).unwrap().clone();
                    got.push((row.0, row.1, u.times[i], u.diffs[i]));
                }
            }
        }
        got.sort();
        assert_eq!(uppers, vec![Some(2), Some(3)]);
        assert_eq!(
            got,
            vec![
                (1, "x".into(), 1, 2),
                (1, "x".into(), 2, -1),
                (2, "y".into(), 1, 1),
                (2, "y".into(), 2, -1),
                (3, "z".into(), 2, 1),
            ]
        );
        // An error at time 3: reads at 3 fail, the subscription ends with it.
        log.append_updates(vec![(Err("division by zero".into()), 3, 1)], false)
            .unwrap();
        log.advance(4);
        assert_eq!(log.error_at(2), None);
        assert_eq!(log.error_at(3).as_deref(), Some("division by zero"));
        match rx.try_recv() {
            Ok(Response::SubscribeBatch {
                upper: None,
                update: Err(e),
                ..
            }) => assert_eq!(e, "division by zero"),
            _ => panic!("the subscription did not report the error"),
        }
    }
}
