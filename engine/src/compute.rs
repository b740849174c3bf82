//! A worker's compute state: table inputs, the arrangements of tables and
//! dataflows, pending peeks and subscriptions.
//!
//! The worker loop feeds [`ComputeState::handle`] every command in order and
//! calls [`ComputeState::poll`] after each step of the timely worker. All
//! workers see the same commands in the same order, so they build the same
//! dataflows; each one holds and answers for its own shard of every
//! arrangement.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use differential_dataflow::input::InputSession;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;
use timely::worker::Worker;
use tracing::warn;
use weir_protocol::{Command, Response, ResponseSender, SubscribeUpdate, TableUpdate};
use weir_sql::{GlobalId, Plan};

use crate::render::{Arranged, ErrTrace, Imports, KeyedTrace, RowTrace, arrow_schema, render};
use crate::row::{Row, RowCodec};
use crate::{Diff, Time};

struct Table {
    input: TableInput,
    codec: RowCodec,
}

/// A table's input: whole rows, or (key, row) pairs for a keyed table.
enum TableInput {
    Rows(InputSession<Time, Row, Diff>),
    Keyed {
        input: InputSession<Time, (Row, Row), Diff>,
        key: Vec<usize>,
        key_codec: RowCodec,
    },
}

impl TableInput {
    fn advance(&mut self, upper: Time) {
        match self {
            TableInput::Rows(i) => {
                i.advance_to(upper);
                i.flush();
            }
            TableInput::Keyed { input, .. } => {
                input.advance_to(upper);
                input.flush();
            }
        }
    }
}

struct Arrangement {
    dataflow: usize,
    codec: RowCodec,
}

struct PendingPeek {
    peek_id: u64,
    target: GlobalId,
    time: Time,
    keys: Option<std::sync::Arc<Vec<Row>>>,
}

/// Everything one worker holds.
pub struct ComputeState {
    tables: HashMap<GlobalId, Table>,
    traces: HashMap<GlobalId, (Arranged, Option<ErrTrace>)>,
    arrangements: HashMap<GlobalId, Arrangement>,
    subscribes: HashMap<u64, usize>,
    peeks: Vec<PendingPeek>,
    responses: ResponseSender,
    /// Every table input has been advanced to this time.
    upper: Time,
    /// History before this time has been merged away.
    since: Time,
    /// The latest write: no read will ever be earlier.
    target_since: Time,
}

impl ComputeState {
    pub fn new(responses: ResponseSender) -> Self {
        ComputeState {
            tables: HashMap::new(),
            traces: HashMap::new(),
            arrangements: HashMap::new(),
            subscribes: HashMap::new(),
            peeks: Vec::new(),
            responses,
            upper: 0,
            since: 0,
            target_since: 0,
        }
    }

    /// Apply one command. Returns false on `Shutdown`.
    pub fn handle(&mut self, worker: &mut Worker, command: Command) -> bool {
        match command {
            Command::CreateTable {
                id,
                name,
                schema,
                key,
            } => {
                let codec = match RowCodec::new(schema.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(table = %name, error = %e, "cannot create table");
                        return true;
                    }
                };
                let dataflow = worker.next_dataflow_index();
                let arrange = format!("Arrange {name}");
                let (mut input, trace) = if key.is_empty() {
                    let mut input = InputSession::new();
                    let trace = worker.dataflow_named::<Time, _, _>(&format!("table {name}"), |scope| {
                        crate::render::arrange_rows(input.to_collection(scope), &arrange)
                    });
                    (TableInput::Rows(input), Arranged::Rows(trace))
                } else {
                    let key_schema = Arc::new(arrow::datatypes::Schema::new(
                        key.iter().map(|i| schema.field(*i).clone()).collect::<Vec<_>>(),
                    ));
                    let key_codec = match RowCodec::new(key_schema) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(table = %name, error = %e, "cannot create table");
                            return true;
                        }
                    };
                    let mut input = InputSession::new();
                    let trace: KeyedTrace = worker
                        .dataflow_named::<Time, _, _>(&format!("table {name}"), |scope| {
                            crate::render::arrange_keyed(input.to_collection(scope), &arrange)
                        });
                    (
                        TableInput::Keyed {
                            input,
                            key,
                            key_codec,
                        },
                        Arranged::Keyed(trace),
                    )
                };
                input.advance(self.upper);
                self.traces.insert(id, (trace, None));
                self.arrangements.insert(
                    id,
                    Arrangement {
                        dataflow,
                        codec: RowCodec::new(codec.schema().clone()).expect("schema encodes"),
                    },
                );
                self.tables.insert(id, Table { input, codec });
            }
            Command::CreateDataflow { id, name, plan } => {
                let codec = match RowCodec::new(arrow_schema(&plan.schema)) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(dataflow = %name, error = %e, "cannot create dataflow");
                        return true;
                    }
                };
                let dataflow = worker.next_dataflow_index();
                let traces = &mut self.traces;
                let (ok, err) =
                    worker.dataflow_named::<Time, _, _>(&format!("materialized view {name}"), |scope| {
                        let (ok, err) = match render(&plan, scope, &mut Imports { traces }) {
                            Ok(pair) => pair,
                            Err(e) => {
                                let msg = e.to_string();
                                let errs = if scope.index() == 0 {
                                    vec![(msg, 0, 1)]
                                } else {
                                    vec![]
                                };
                                use differential_dataflow::AsCollection;
                                use timely::dataflow::operators::ToStream;
                                (crate::render::empty(scope), errs.to_stream(scope).as_collection())
                            }
                        };
                        let ok = crate::render::arrange_rows(ok, &format!("Arrange {name}"));
                        let err = err.arrange_by_self_named(&format!("Arrange {name} errors")).trace;
                        (ok, err)
                    });
                self.traces.insert(id, (Arranged::Rows(ok), Some(err)));
                self.arrangements.insert(id, Arrangement { dataflow, codec });
            }
            Command::Drop { id } => {
                self.tables.remove(&id);
                self.traces.remove(&id);
                if let Some(a) = self.arrangements.remove(&id) {
                    worker.drop_dataflow(a.dataflow);
                }
            }
            Command::Write { time, updates } => self.write(worker, time, updates),
            Command::Peek {
                peek_id,
                target,
                time,
                keys,
            } => self.peeks.push(PendingPeek {
                peek_id,
                target,
                time,
                keys,
            }),
            Command::Subscribe {
                subscribe_id,
                plan,
                as_of,
            } => self.subscribe(worker, subscribe_id, &plan, as_of),
            Command::DropSubscribe { subscribe_id } => {
                if let Some(dataflow) = self.subscribes.remove(&subscribe_id) {
                    worker.drop_dataflow(dataflow);
                }
            }
            Command::ArrangementSizes { peek_id } => {
                let result = self.arrangement_sizes(worker.index());
                let _ = self.responses.send(Response::Peek {
                    peek_id,
                    worker: worker.index(),
                    result,
                });
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Every arrangement this worker maintains, measured now, with the
    /// relation whose dataflow holds it (see
    /// [`weir_protocol::arrangement_sizes_schema`]).
    fn arrangement_sizes(&self, worker: usize) -> Result<RecordBatch, String> {
        use arrow::array::{ArrayRef, Int64Array, StringArray};
        let owners: HashMap<usize, GlobalId> = self
            .arrangements
            .iter()
            .map(|(id, a)| (a.dataflow, *id))
            .collect();
        let sizes = crate::sizes::all();
        let int = |f: &dyn Fn(&crate::sizes::Size) -> usize| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                sizes.iter().map(|(_, _, s)| f(s) as i64),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter(
                sizes.iter().map(|(d, _, _)| owners.get(d).map(|id| *id as i64)),
            )),
            Arc::new(StringArray::from_iter_values(
                sizes.iter().map(|(_, name, _)| name),
            )),
            Arc::new(Int64Array::from_iter_values(sizes.iter().map(|_| worker as i64))),
            int(&|s| s.batches),
            int(&|s| s.records),
            int(&|s| s.bytes),
            int(&|s| s.capacity),
        ];
        RecordBatch::try_new(weir_protocol::arrangement_sizes_schema(), columns).map_err(|e| e.to_string())
    }

    fn write(&mut self, worker: &Worker, time: Time, updates: Vec<TableUpdate>) {
        let (index, peers) = (worker.index(), worker.peers());
        for TableUpdate { table, batch, diff } in updates {
            let Some(t) = self.tables.get_mut(&table) else {
                continue;
            };
            // Each worker encodes its own slice of the batch.
            let n = batch.num_rows();
            let (lo, hi) = (n * index / peers, n * (index + 1) / peers);
            if lo == hi {
                continue;
            }
            let slice = batch.slice(lo, hi - lo);
            let rows = match t.codec.encode(slice.columns(), hi - lo) {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(table, error = %e, "cannot encode written rows");
                    continue;
                }
            };
            match &mut t.input {
                TableInput::Rows(input) => {
                    for row in rows {
                        input.update_at(row, time, diff as Diff);
                    }
                }
                TableInput::Keyed {
                    input,
                    key,
                    key_codec,
                } => {
                    let columns: Vec<_> = key.iter().map(|i| slice.column(*i).clone()).collect();
                    match key_codec.encode(&columns, hi - lo) {
                        Ok(keys) => {
                            for (k, row) in keys.into_iter().zip(rows) {
                                input.update_at((k, row), time, diff as Diff);
                            }
                        }
                        Err(e) => warn!(table, error = %e, "cannot encode written keys"),
                    }
                }
            }
        }
        self.upper = self.upper.max(time + 1);
        for t in self.tables.values_mut() {
            t.input.advance(self.upper);
        }
        // Reads are issued at the latest write time or later.
        self.target_since = self.target_since.max(time);
        self.compact();
    }

    /// Allow the arrangements to merge history up to the latest write, but
    /// never past a peek that is still waiting to read.
    fn compact(&mut self) {
        let since = self
            .peeks
            .iter()
            .map(|p| p.time)
            .fold(self.target_since, Time::min);
        if since <= self.since {
            return;
        }
        self.since = since;
        let frontier = Antichain::from_elem(since);
        for (ok, err) in self.traces.values_mut() {
            ok.compact(frontier.borrow());
            if let Some(err) = err {
                err.set_logical_compaction(frontier.borrow());
                err.set_physical_compaction(frontier.borrow());
            }
        }
    }

    fn subscribe(&mut self, worker: &mut Worker, subscribe_id: u64, plan: &Plan, as_of: Time) {
        let dataflow = worker.next_dataflow_index();
        let traces = &mut self.traces;
        let responses = self.responses.clone();
        let schema = arrow_schema(&plan.schema);
        worker.dataflow_named::<Time, _, _>(&format!("subscribe {subscribe_id}"), |scope| {
            let worker_index = scope.index();
            let fail = |e: String| {
                let _ = responses.send(Response::SubscribeBatch {
                    subscribe_id,
                    worker: worker_index,
                    upper: None,
                    update: Err(e),
                });
            };
            let (ok, err) = match render(plan, scope, &mut Imports { traces }) {
                Ok(pair) => pair,
                Err(e) => return fail(e.to_string()),
            };
            let codec = match RowCodec::new(schema) {
                Ok(c) => c,
                Err(e) => return fail(e.to_string()),
            };
            let updates = ok
                .map(Ok::<Row, String>)
                .concat(err.map(Err))
                .consolidate_named::<_, KeySpine<_, _, _>, _>(
                    "ConsolidateSubscribe",
                    KeyBatcher::new,
                    |k, &()| k.clone(),
                );
            let mut buffer: Vec<(Result<Row, String>, Time, Diff)> = Vec::new();
            let mut reported: Option<Time> = Some(0);
            updates.inner.sink(
                Pipeline,
                &format!("Subscribe {subscribe_id}"),
                move |(input, frontier)| {
                    input.for_each(|_cap, data| buffer.append(data));
                    let upper = frontier.frontier().iter().min().copied();
                    if upper == reported {
                        return;
                    }
                    reported = upper;
                    let (mut ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut buffer)
                        .into_iter()
                        .partition(|(_, t, _)| upper.is_none_or(|u| *t < u));
                    buffer = keep;
                    for (_, t, _) in ready.iter_mut() {
                        *t = (*t).max(as_of);
                    }
                    differential_dataflow::consolidation::consolidate_updates(&mut ready);
                    ready.sort_by_key(|(_, t, _)| *t);
                    if let Some((Err(e), _, _)) = ready.iter().find(|(r, _, d)| r.is_err() && *d > 0) {
                        let _ = responses.send(Response::SubscribeBatch {
                            subscribe_id,
                            worker: worker_index,
                            upper: None,
                            update: Err(e.clone()),
                        });
                        return;
                    }
                    let rows: Vec<&(Result<Row, String>, Time, Diff)> =
                        ready.iter().filter(|(r, _, _)| r.is_ok()).collect();
                    let update = codec
                        .decode(
                            rows.iter()
                                .map(|(r, _, _)| r.as_ref().map(|r| r.as_slice()).unwrap_or(&[])),
                        )
                        .map(|batch| SubscribeUpdate {
                            batch,
                            times: rows.iter().map(|(_, t, _)| *t).collect(),
                            diffs: rows.iter().map(|(_, _, d)| *d as i64).collect(),
                        })
                        .map_err(|e| e.to_string());
                    let _ = responses.send(Response::SubscribeBatch {
                        subscribe_id,
                        worker: worker_index,
                        upper,
                        update,
                    });
                },
            );
        });
        self.subscribes.insert(subscribe_id, dataflow);
    }

    /// Answer every peek whose data is complete.
    pub fn poll(&mut self, worker: &Worker) {
        let index = worker.index();
        let peers = worker.peers();
        let mut pending = std::mem::take(&mut self.peeks);
        pending.retain(|peek| {
            let Some((ok, err)) = self.traces.get_mut(&peek.target) else {
                let _ = self.responses.send(Response::Peek {
                    peek_id: peek.peek_id,
                    worker: index,
                    result: Err("relation was dropped".into()),
                });
                return false;
            };
            let mut upper = Antichain::new();
            ok.read_upper(&mut upper);
            if upper.less_equal(&peek.time) {
                return true;
            }
            if let Some(err) = err {
                err.read_upper(&mut upper);
                if upper.less_equal(&peek.time) {
                    return true;
                }
                if let Some(message) = read_errors(err, peek.time) {
                    let _ = self.responses.send(Response::Peek {
                        peek_id: peek.peek_id,
                        worker: index,
                        result: Err(message),
                    });
                    return false;
                }
            }
            let codec = &self.arrangements[&peek.target].codec;
            let result = match ok {
                Arranged::Rows(t) => read_rows(t, peek.time, codec),
                Arranged::Keyed(t) => {
                    // Only the keys this worker's part of the table can hold.
                    let keys = peek.keys.as_deref().map(|keys| {
                        keys.iter()
                            .filter(|k| owner(k, peers) == index)
                            .collect::<Vec<&Row>>()
                    });
                    read_keyed(t, peek.time, codec, keys)
                }
            };
            let _ = self.responses.send(Response::Peek {
                peek_id: peek.peek_id,
                worker: index,
                result,
            });
            false
        });
        self.peeks.extend(pending);
        self.compact();
    }
}

/// The first error a relation holds at `time`, if any.
fn read_errors(trace: &mut ErrTrace, time: Time) -> Option<String> {
    let batches = trace
        .batches_through(Antichain::new().borrow())
        .unwrap_or_default();
    let (mut cursor, storage) = cursor_list(batches);
    while cursor.key_valid(&storage) {
        let count = count_at(&mut cursor, &storage, time);
        if count > 0 {
            return Some(cursor.key(&storage).clone());
        }
        cursor.step_key(&storage);
    }
    None
}

/// Rows and their multiplicities, gathered from a cursor.
#[derive(Default)]
struct Gathered {
    rows: Vec<Row>,
    /// For each output row, its index in `rows` (repeated rows repeat).
    take: Vec<u32>,
}

impl Gathered {
    fn push(&mut self, row: &[u8], count: Diff) -> Result<(), String> {
        if count < 0 {
            return Err("internal error: negative multiplicity".into());
        }
        if count > 0 {
            for _ in 0..count {
                self.take.push(self.rows.len() as u32);
            }
            self.rows.push(row.to_vec());
        }
        Ok(())
    }

    fn into_batch(self, codec: &RowCodec) -> Result<RecordBatch, String> {
        let batch = codec
            .decode(self.rows.iter().map(|r| r.as_slice()))
            .map_err(|e| e.to_string())?;
        if self.take.len() == self.rows.len() {
            return Ok(batch);
        }
        take_record_batch(&batch, &UInt32Array::from(self.take)).map_err(|e| e.to_string())
    }
}

/// The net count at `time` of the update the cursor is on.
fn count_at<C>(cursor: &mut C, storage: &C::Storage, time: Time) -> Diff
where
    C: for<'a> Cursor<TimeGat<'a> = &'a Time, DiffGat<'a> = &'a Diff>,
{
    let mut count: Diff = 0;
    cursor.map_times(storage, |t, d| {
        if *t <= time {
            count += *d;
        }
    });
    count
}

/// This worker's rows of a keyed table at `time`: all, or those with
/// `keys`.
fn read_keyed(
    trace: &mut KeyedTrace,
    time: Time,
    codec: &RowCodec,
    keys: Option<Vec<&Row>>,
) -> Result<RecordBatch, String> {
    let batches = trace
        .batches_through(Antichain::new().borrow())
        .unwrap_or_default();
    if let Some(keys) = keys {
        return read_keys(&batches, time, codec, keys);
    }
    let (mut cursor, storage) = cursor_list(batches);
    let mut out = Gathered::default();
    while cursor.key_valid(&storage) {
        // Every value (row) under the cursor's current key.
        while cursor.val_valid(&storage) {
            let count = count_at(&mut cursor, &storage, time);
            out.push(cursor.val(&storage), count)?;
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    out.into_batch(codec)
}

/// [`read_keyed`] for `keys`: each batch of the spine is searched on its
/// own and the rows' counts summed after. A cursor over the whole list of
/// batches re-compares every batch's position at each step, which made a
/// 1,000-key read of a 600,000-row part of a table cost ~2.5 ms.
fn read_keys(
    batches: &[<KeyedTrace as TraceReader>::Batch],
    time: Time,
    codec: &RowCodec,
    mut sorted: Vec<&Row>,
) -> Result<RecordBatch, String> {
    use differential_dataflow::trace::Navigable;
    sorted.sort();
    sorted.dedup();
    let mut found: Vec<(&[u8], Diff)> = Vec::new();
    for batch in batches {
        let batch = &**batch;
        let mut cursor = batch.cursor();
        for k in &sorted {
            cursor.seek_key(batch, k.as_slice());
            if cursor.get_key(batch) != Some(k.as_slice()) {
                continue;
            }
            while cursor.val_valid(batch) {
                let count = count_at(&mut cursor, batch, time);
                if count != 0 {
                    found.push((cursor.val(batch), count));
                }
                cursor.step_val(batch);
            }
        }
    }
    found.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Gathered::default();
    let mut rows = found.into_iter().peekable();
    while let Some((row, mut count)) = rows.next() {
        while let Some((_, more)) = rows.next_if(|(next, _)| *next == row) {
            count += more;
        }
        out.push(row, count)?;
    }
    out.into_batch(codec)
}

/// The worker whose part of an arrangement holds `key`: arrangements
/// exchange updates by `key.hashed()`, which timely's exchange routes
/// with a mask when the worker count is a power of two and by remainder
/// otherwise (`keys_live_with_their_owner` pins this).
fn owner(key: &Row, peers: usize) -> usize {
    use differential_dataflow::hashable::Hashable;
    let (hash, peers) = (key.hashed(), peers as u64);
    let owner = if peers.is_power_of_two() {
        hash & (peers - 1)
    } else {
        hash % peers
    };
    owner as usize
}

/// This worker's rows of a relation at `time`, as a batch.
fn read_rows(trace: &mut RowTrace, time: Time, codec: &RowCodec) -> Result<RecordBatch, String> {
    let batches = trace
        .batches_through(Antichain::new().borrow())
        .unwrap_or_default();
    let (mut cursor, storage) = cursor_list(batches);
    let mut out = Gathered::default();
    while cursor.key_valid(&storage) {
        let count = count_at(&mut cursor, &storage, time);
        out.push(cursor.key(&storage), count)?;
        cursor.step_key(&storage);
    }
    out.into_batch(codec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::InputSession;

    /// Every key a worker's part of a keyed arrangement holds is one
    /// [`owner`] assigns to it, for power-of-two worker counts and others.
    #[test]
    fn keys_live_with_their_owner() {
        for workers in [2, 3, 4] {
            timely::execute(timely::Config::process(workers), move |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let mut input: InputSession<Time, (Row, Row), Diff> = InputSession::new();
                let mut trace = worker.dataflow::<Time, _, _>(|scope| {
                    crate::render::arrange_keyed(input.to_collection(scope), "Arrange keys")
                });
                if index == 0 {
                    for i in 0..1000u32 {
                        input.insert((i.to_be_bytes().to_vec(), vec![1]));
                    }
                }
                input.advance_to(1);
                input.flush();
                let mut upper = Antichain::new();
                while {
                    trace.read_upper(&mut upper);
                    upper.less_equal(&0)
                } {
                    worker.step();
                }
                let batches = trace
                    .batches_through(Antichain::new().borrow())
                    .unwrap_or_default();
                let (mut cursor, storage) = cursor_list(batches);
                let mut held = 0;
                while cursor.key_valid(&storage) {
                    let key: Row = cursor.key(&storage).to_vec();
                    assert_eq!(owner(&key, peers), index, "{workers} workers");
                    held += 1;
                    cursor.step_key(&storage);
                }
                // The keys are spread, not all on one worker.
                assert!(
                    held > 1000 / peers / 2,
                    "{held} keys on worker {index} of {peers}"
                );
            })
            .unwrap();
        }
    }
}
