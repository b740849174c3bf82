//! A worker's compute state: tables and materialized views' outputs (as
//! logs, [`crate::log`]), the views' dataflows, pending peeks and
//! subscriptions.
//!
//! The worker loop feeds [`ComputeState::handle`] every command in order and
//! calls [`ComputeState::poll`] after each step of the timely worker. All
//! workers see the same commands in the same order, so they build the same
//! dataflows; each one holds and answers for its own part of every table
//! and view.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::RecordBatch;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::worker::Worker;
use tracing::warn;
use weir_protocol::{Command, Response, ResponseSender, SubscribeUpdate, TableUpdate};
use weir_sql::{GlobalId, Plan, PlanNode};

use crate::eval::RowEval;
use crate::log::TableLog;
use crate::render::{Imports, Input, arrow_schema, render};
use crate::row::{Row, RowCodec};
use crate::{Diff, Time};

/// Rows (about, per worker) a write feeds the dataflows before letting
/// them run. A step of many chunks (a replay taking all it has ahead, a
/// CDC step folding a backlog) would otherwise queue all its rows, and
/// each operator's output of them, before any operator consumed any:
/// Nexmark q5's five windows per bid held gigabytes that way.
const FEED_ROWS: usize = 64 * 1024;

/// How a subscription is answered.
enum Subscription {
    /// By a dataflow of its own.
    Dataflow(usize),
    /// From the log of the relation it reads as it stands.
    Log(GlobalId),
}

struct PendingPeek {
    peek_id: u64,
    target: GlobalId,
    time: Time,
    keys: Option<std::sync::Arc<Vec<Vec<u8>>>>,
    columns: Option<std::sync::Arc<Vec<usize>>>,
}

/// Everything one worker holds.
pub struct ComputeState {
    /// Tables' and views' rows.
    logs: HashMap<GlobalId, Rc<RefCell<TableLog>>>,
    /// Each materialized view's dataflow.
    views: HashMap<GlobalId, usize>,
    subscribes: HashMap<u64, Subscription>,
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
            logs: HashMap::new(),
            views: HashMap::new(),
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
                append_only,
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
                let mut log = TableLog::new(codec, key);
                if append_only {
                    log.set_append_only();
                }
                log.advance(self.upper);
                self.logs.insert(id, Rc::new(RefCell::new(log)));
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
                let mut view = TableLog::view(codec);
                if crate::render::monotonic(&plan, &self.logs) {
                    view.set_append_only();
                }
                let log = Rc::new(RefCell::new(view));
                // A map and filter of one table needs no dataflow: the
                // table's log keeps it (see `TableLog::derive`).
                if let PlanNode::MapFilterProject {
                    input,
                    filters,
                    projection,
                } = &plan.node
                    && let PlanNode::Get { id: table, .. } = &input.node
                    && let Some(source) = self.logs.get(table).filter(|l| !l.borrow().is_view())
                    && let Ok(eval) = RowEval::new(&input.schema, filters, &[projection])
                {
                    if let Err(e) = source.borrow_mut().derive(&log, eval, self.since) {
                        warn!(view = %name, error = %e, "cannot keep a view's output");
                    }
                    self.logs.insert(id, log);
                    return true;
                }
                let logs = &self.logs;
                let inputs =
                    worker.dataflow_named::<Time, _, _>(&format!("materialized view {name}"), |scope| {
                        let mut imports = Imports::new(logs);
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
                        let shape = crate::render::output_shape(&plan);
                        crate::log::record_output(ok, err, log.clone(), &name, shape);
                        imports.into_inputs()
                    });
                self.attach(dataflow, inputs);
                self.logs.insert(id, log);
                self.views.insert(id, dataflow);
            }
            Command::Drop { id } => {
                self.logs.remove(&id);
                if let Some(dataflow) = self.views.remove(&id) {
                    self.detach(dataflow);
                    worker.drop_dataflow(dataflow);
                }
            }
            Command::Write { time, updates } => self.write(worker, time, updates),
            Command::Peek {
                peek_id,
                target,
                time,
                keys,
                columns,
            } => self.peeks.push(PendingPeek {
                peek_id,
                target,
                time,
                keys,
                columns,
            }),
            Command::Subscribe {
                subscribe_id,
                plan,
                as_of,
            } => self.subscribe(worker, subscribe_id, &plan, as_of),
            Command::DropSubscribe { subscribe_id } => match self.subscribes.remove(&subscribe_id) {
                Some(Subscription::Dataflow(dataflow)) => {
                    self.detach(dataflow);
                    worker.drop_dataflow(dataflow);
                }
                Some(Subscription::Log(id)) => {
                    if let Some(log) = self.logs.get(&id) {
                        log.borrow_mut().unsubscribe(subscribe_id);
                    }
                }
                None => {}
            },
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
        let owners: HashMap<usize, GlobalId> = self.views.iter().map(|(id, d)| (*d, *id)).collect();
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

    fn write(&mut self, worker: &mut Worker, time: Time, updates: Vec<TableUpdate>) {
        let (index, peers) = (worker.index(), worker.peers());
        let mut fed = 0;
        for TableUpdate { table, batch, diff } in updates {
            let Some(log) = self.logs.get(&table) else {
                continue;
            };
            fed += batch.num_rows() / peers;
            if let Err(e) = log
                .borrow_mut()
                .write_part(batch, time, diff as Diff, index, peers)
            {
                warn!(table, error = %e, "cannot keep written rows");
            }
            if fed >= FEED_ROWS {
                // Let the dataflows take in what they have been fed.
                fed = 0;
                worker.step();
            }
        }
        self.upper = self.upper.max(time + 1);
        for log in self.logs.values() {
            let mut log = log.borrow_mut();
            // A view's log advances as its dataflow completes times.
            if !log.is_view() {
                log.advance(self.upper);
            }
        }
        // Reads are issued at the latest write time or later.
        self.target_since = self.target_since.max(time);
        self.compact();
    }

    /// Allow the logs to merge history up to the latest write, but never
    /// past a peek that is still waiting to read.
    fn compact(&mut self) {
        // A writer's pacing peek (no keys) reads nothing: it holds back
        // no history.
        let since = self
            .peeks
            .iter()
            .filter(|p| !matches!(p.keys.as_deref().map(|k| k.as_slice()), Some([])))
            .map(|p| p.time)
            .fold(self.target_since, Time::min);
        if since <= self.since {
            return;
        }
        self.since = since;
        for (id, log) in &self.logs {
            if let Err(e) = log.borrow_mut().compact(since) {
                warn!(relation = id, error = %e, "cannot compact a log");
            }
        }
    }

    fn subscribe(&mut self, worker: &mut Worker, subscribe_id: u64, plan: &Plan, as_of: Time) {
        // A relation as it stands (how every view's output is recorded)
        // is read from its log as the batches it holds: nothing to
        // encode, sort or decode.
        if let PlanNode::Get { id, .. } = &plan.node
            && let Some(log) = self.logs.get(id)
        {
            log.borrow_mut()
                .subscribe(subscribe_id, as_of, worker.index(), self.responses.clone());
            self.subscribes.insert(subscribe_id, Subscription::Log(*id));
            return;
        }
        let dataflow = worker.next_dataflow_index();
        let logs = &self.logs;
        let responses = self.responses.clone();
        let schema = arrow_schema(&plan.schema);
        let inputs = worker.dataflow_named::<Time, _, _>(&format!("subscribe {subscribe_id}"), |scope| {
            let mut imports = Imports::new(logs);
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
                Err(e) => {
                    fail(e.to_string());
                    return imports.into_inputs();
                }
            };
            let codec = match RowCodec::new(schema) {
                Ok(c) => c,
                Err(e) => {
                    fail(e.to_string());
                    return imports.into_inputs();
                }
            };
            let updates = ok.map(Ok::<Row, String>).concat(err.map(Err));
            let updates = updates.consolidate_named::<_, KeySpine<_, _, _>, _>(
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
                        .map(|batch| {
                            vec![SubscribeUpdate {
                                batch,
                                times: rows.iter().map(|(_, t, _)| *t).collect(),
                                diffs: rows.iter().map(|(_, _, d)| *d as i64).collect(),
                            }]
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
            imports.into_inputs()
        });
        self.attach(dataflow, inputs);
        self.subscribes
            .insert(subscribe_id, Subscription::Dataflow(dataflow));
    }

    /// Start feeding the inputs `dataflow` was built with.
    fn attach(&mut self, dataflow: usize, inputs: Vec<Input>) {
        for input in inputs {
            let id = input.id;
            if let Some(log) = self.logs.get(&id)
                && let Err(e) = log.borrow_mut().attach(dataflow, input, self.since)
            {
                warn!(relation = id, error = %e, "cannot feed a relation to a dataflow");
            }
        }
    }

    /// Stop feeding `dataflow`'s inputs.
    fn detach(&mut self, dataflow: usize) {
        for log in self.logs.values() {
            log.borrow_mut().detach(dataflow);
        }
    }

    /// Answer every peek whose data is complete.
    pub fn poll(&mut self, worker: &Worker) {
        let index = worker.index();
        let mut pending = std::mem::take(&mut self.peeks);
        pending.retain(|peek| {
            let Some(log) = self.logs.get(&peek.target) else {
                let _ = self.responses.send(Response::Peek {
                    peek_id: peek.peek_id,
                    worker: index,
                    result: Err("relation was dropped".into()),
                });
                return false;
            };
            let log = log.borrow();
            if log.upper() <= peek.time {
                return true;
            }
            let result = match peek.keys.as_deref().map(|k| k.as_slice()) {
                // Asked for no keys: a writer pacing itself by the
                // dataflows, answered once every view reading the
                // table has absorbed `time` (see `Controller::absorbed`).
                Some([]) => {
                    // Views kept by the table's log itself are never
                    // behind it, but what reads them may be.
                    let reading = |log: &TableLog| log.readers().collect::<Vec<_>>();
                    let mut dataflows = reading(&log);
                    for view in log.derived() {
                        dataflows.extend(reading(&view.borrow()));
                    }
                    let behind = dataflows.into_iter().any(|dataflow| {
                        self.views
                            .iter()
                            .find(|(_, d)| **d == dataflow)
                            .and_then(|(id, _)| self.logs.get(id))
                            .is_some_and(|view| view.borrow().upper() <= peek.time)
                    });
                    if behind {
                        return true;
                    }
                    Ok(RecordBatch::new_empty(log.schema().clone()))
                }
                keys => match log.error_at(peek.time) {
                    Some(message) => Err(message),
                    None => log.read(peek.time, keys, peek.columns.as_deref().map(|c| c.as_slice())),
                },
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
