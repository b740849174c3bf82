//! A worker's compute state: tables (as logs, [`crate::log`]), the
//! arrangements of materialized views, pending peeks and subscriptions.
//!
//! The worker loop feeds [`ComputeState::handle`] every command in order and
//! calls [`ComputeState::poll`] after each step of the timely worker. All
//! workers see the same commands in the same order, so they build the same
//! dataflows; each one holds and answers for its own part of every table
//! and arrangement.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;
use timely::worker::Worker;
use tracing::warn;
use weir_protocol::{Command, Response, ResponseSender, SubscribeUpdate, TableUpdate};
use weir_sql::{GlobalId, Plan, PlanNode};

use crate::log::{TableLog, TableReader};
use crate::render::{ErrTrace, Imports, RowTrace, arrow_schema, render};
use crate::row::{Row, RowCodec};
use crate::{Diff, Time};

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
    tables: HashMap<GlobalId, TableLog>,
    traces: HashMap<GlobalId, (RowTrace, ErrTrace)>,
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
                let key = if key.is_empty() {
                    None
                } else {
                    let key_schema = Arc::new(arrow::datatypes::Schema::new(
                        key.iter().map(|i| schema.field(*i).clone()).collect::<Vec<_>>(),
                    ));
                    match RowCodec::new(key_schema) {
                        Ok(c) => Some((key, c)),
                        Err(e) => {
                            warn!(table = %name, error = %e, "cannot create table");
                            return true;
                        }
                    }
                };
                self.tables.insert(id, TableLog::new(codec, key));
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
                let mut imports = Imports::new(&mut self.traces, &self.tables);
                let (ok, err) =
                    worker.dataflow_named::<Time, _, _>(&format!("materialized view {name}"), |scope| {
                        let (ok, err) = match render(&plan, scope, &mut imports) {
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
                let inputs = imports.into_inputs();
                self.attach(dataflow, inputs);
                self.traces.insert(id, (ok, err));
                self.arrangements.insert(id, Arrangement { dataflow, codec });
            }
            Command::Drop { id } => {
                self.tables.remove(&id);
                self.traces.remove(&id);
                if let Some(a) = self.arrangements.remove(&id) {
                    self.detach(a.dataflow);
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
                    self.detach(dataflow);
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
            let Some(log) = self.tables.get_mut(&table) else {
                continue;
            };
            if let Err(e) = log.write_part(batch, time, diff as Diff, index, peers) {
                warn!(table, error = %e, "cannot keep written rows");
            }
        }
        self.upper = self.upper.max(time + 1);
        for log in self.tables.values_mut() {
            log.advance(self.upper);
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
        for (id, log) in &mut self.tables {
            if let Err(e) = log.compact(since) {
                warn!(table = id, error = %e, "cannot compact a table's log");
            }
        }
        let frontier = Antichain::from_elem(since);
        for (ok, err) in self.traces.values_mut() {
            ok.set_logical_compaction(frontier.borrow());
            ok.set_physical_compaction(frontier.borrow());
            err.set_logical_compaction(frontier.borrow());
            err.set_physical_compaction(frontier.borrow());
        }
    }

    fn subscribe(&mut self, worker: &mut Worker, subscribe_id: u64, plan: &Plan, as_of: Time) {
        let dataflow = worker.next_dataflow_index();
        // A subscription to an arranged relation as it stands (how a
        // view's output is recorded) reads updates that are consolidated
        // already: each (row, time) is in one batch of the arrangement,
        // once. Only the snapshot, whose times all become `as_of`, can
        // repeat a row. Sorting every update again cost as much as the
        // view's own arrangement.
        let consolidated = matches!(&plan.node, PlanNode::Get { id, .. } if self.traces.contains_key(id));
        let mut imports = Imports::new(&mut self.traces, &self.tables);
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
            let (ok, err) = match render(plan, scope, &mut imports) {
                Ok(pair) => pair,
                Err(e) => return fail(e.to_string()),
            };
            let codec = match RowCodec::new(schema) {
                Ok(c) => c,
                Err(e) => return fail(e.to_string()),
            };
            let updates = ok.map(Ok::<Row, String>).concat(err.map(Err));
            let updates = if consolidated {
                updates
            } else {
                updates.consolidate_named::<_, KeySpine<_, _, _>, _>(
                    "ConsolidateSubscribe",
                    KeyBatcher::new,
                    |k, &()| k.clone(),
                )
            };
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
                    let mut advanced = false;
                    for (_, t, _) in ready.iter_mut() {
                        advanced |= *t < as_of;
                        *t = (*t).max(as_of);
                    }
                    if advanced || !consolidated {
                        differential_dataflow::consolidation::consolidate_updates(&mut ready);
                    }
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
        let inputs = imports.into_inputs();
        self.attach(dataflow, inputs);
        self.subscribes.insert(subscribe_id, dataflow);
    }

    /// Start feeding the table inputs `dataflow` was built with.
    fn attach(&mut self, dataflow: usize, inputs: Vec<(GlobalId, TableReader)>) {
        for (id, input) in inputs {
            if let Some(log) = self.tables.get_mut(&id)
                && let Err(e) = log.attach(dataflow, input, self.since, self.upper)
            {
                warn!(table = id, error = %e, "cannot feed a table to a dataflow");
            }
        }
    }

    /// Stop feeding `dataflow`'s table inputs.
    fn detach(&mut self, dataflow: usize) {
        for log in self.tables.values_mut() {
            log.detach(dataflow);
        }
    }

    /// Answer every peek whose data is complete.
    pub fn poll(&mut self, worker: &Worker) {
        let index = worker.index();
        let mut pending = std::mem::take(&mut self.peeks);
        pending.retain(|peek| {
            if let Some(log) = self.tables.get(&peek.target) {
                if self.upper <= peek.time {
                    return true;
                }
                let result = match peek.keys.as_deref().map(|k| k.as_slice()) {
                    // Asked for no keys: a writer pacing itself by the
                    // dataflows, answered once every view reading the
                    // table has absorbed `time` (see `Controller::catch_up`).
                    Some([]) => {
                        let behind = log.readers().any(|dataflow| {
                            self.arrangements
                                .iter()
                                .find(|(_, a)| a.dataflow == dataflow)
                                .and_then(|(id, _)| self.traces.get_mut(id))
                                .is_some_and(|(ok, _)| {
                                    let mut upper = Antichain::new();
                                    ok.read_upper(&mut upper);
                                    upper.less_equal(&peek.time)
                                })
                        });
                        if behind {
                            return true;
                        }
                        Ok(RecordBatch::new_empty(log.schema().clone()))
                    }
                    keys => log.read(peek.time, keys),
                };
                let _ = self.responses.send(Response::Peek {
                    peek_id: peek.peek_id,
                    worker: index,
                    result,
                });
                return false;
            }
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
            let codec = &self.arrangements[&peek.target].codec;
            let result = read_rows(ok, peek.time, codec);
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
pub(crate) struct Gathered {
    rows: Vec<Row>,
    /// For each output row, its index in `rows` (repeated rows repeat).
    take: Vec<u32>,
}

impl Gathered {
    pub(crate) fn push(&mut self, row: &[u8], count: Diff) -> Result<(), String> {
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

    pub(crate) fn into_batch(self, codec: &RowCodec) -> Result<RecordBatch, String> {
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
