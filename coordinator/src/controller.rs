//! The controller: the timestamp oracle and the only path to the workers.
//!
//! Commands go out through one [`CommandSink`] under one lock, so choosing a
//! timestamp and sending the command that uses it are atomic: a peek is
//! always ordered after every write whose time it reads. Worker responses
//! are gathered here (a peek is answered once every worker has answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::{
    Command, CommandSink, Response, ResponseReceiver, SubscribeUpdate, TableUpdate, Timestamp,
};
use weir_sql::{GlobalId, Plan};

use crate::error::AdapterError;

struct Inner {
    sink: Box<dyn CommandSink>,
    /// The latest timestamp issued to a write.
    last_write: Timestamp,
    /// The one before it.
    previous_write: Timestamp,
    next_id: u64,
}

struct PendingPeek {
    remaining: usize,
    batches: Vec<RecordBatch>,
    error: Option<String>,
    reply: Option<oneshot::Sender<Result<Vec<RecordBatch>, String>>>,
}

#[derive(Default)]
struct Pending {
    peeks: HashMap<u64, PendingPeek>,
    subscribes: HashMap<u64, (Timestamp, mpsc::UnboundedSender<SubscribeMessage>)>,
}

/// One worker's message for a subscription.
pub type SubscribeMessage = (usize, Option<Timestamp>, Result<Vec<SubscribeUpdate>, String>);

pub struct Controller {
    inner: Mutex<Inner>,
    pending: Arc<Mutex<Pending>>,
    workers: usize,
}

/// What a peek reads.
pub struct PeekTarget {
    pub id: GlobalId,
    /// The relation's schema (all of its columns).
    pub schema: SchemaRef,
    /// Only the rows with these encoded primary keys.
    pub keys: Option<Arc<Vec<Vec<u8>>>>,
    /// Only these columns, in this order (see [`Command::Peek`]).
    pub columns: Option<Arc<Vec<usize>>>,
}

pub(crate) fn now_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Timestamp)
        .unwrap_or(0)
}

impl Controller {
    /// Take over `sink` and start gathering `responses`.
    pub fn new(sink: Box<dyn CommandSink>, mut responses: ResponseReceiver) -> Arc<Self> {
        let workers = sink.workers();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let controller = Arc::new(Controller {
            inner: Mutex::new(Inner {
                sink,
                last_write: 0,
                previous_write: 0,
                next_id: 0,
            }),
            pending: pending.clone(),
            workers,
        });
        // Open every input at "now" so reads have a time to read at.
        controller.write(Vec::new());
        tokio::spawn(async move {
            while let Some(r) = responses.recv().await {
                let mut p = pending.lock().expect("pending lock");
                match r {
                    Response::Peek { peek_id, result, .. } => {
                        let Some(peek) = p.peeks.get_mut(&peek_id) else {
                            continue;
                        };
                        match result {
                            Ok(b) => peek.batches.push(b),
                            Err(e) => peek.error = peek.error.take().or(Some(e)),
                        }
                        peek.remaining -= 1;
                        if peek.remaining == 0 {
                            let peek = p.peeks.remove(&peek_id).expect("present");
                            let result = match peek.error {
                                Some(e) => Err(e),
                                None => Ok(peek.batches),
                            };
                            if let Some(reply) = peek.reply {
                                let _ = reply.send(result);
                            }
                        }
                    }
                    Response::SubscribeBatch {
                        subscribe_id,
                        worker,
                        upper,
                        update,
                    } => {
                        if let Some((_, tx)) = p.subscribes.get(&subscribe_id) {
                            let _ = tx.send((worker, upper, update));
                        }
                    }
                }
            }
        });
        controller
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn send(&self, command: Command) {
        self.inner.lock().expect("controller lock").sink.send(command);
    }

    /// Apply `updates` atomically at a fresh timestamp, returned.
    pub fn write(&self, updates: Vec<TableUpdate>) -> Timestamp {
        let time = self.next_write_time(0);
        self.write_at(time, updates);
        time
    }

    /// A time later than every write so far, no earlier than `floor` (the
    /// durable state's upper), for the next [`Controller::write_at`].
    pub fn next_write_time(&self, floor: Timestamp) -> Timestamp {
        let inner = self.inner.lock().expect("controller lock");
        now_ms().max(inner.last_write + 1).max(floor)
    }

    /// Apply `updates` atomically at `time`, which must come from
    /// [`Controller::next_write_time`] with no write in between (the
    /// committer is the only writer).
    pub fn write_at(&self, time: Timestamp, updates: Vec<TableUpdate>) {
        let mut inner = self.inner.lock().expect("controller lock");
        debug_assert!(time > inner.last_write, "writes go forward in time");
        let time = time.max(inner.last_write + 1);
        inner.previous_write = inner.last_write;
        inner.last_write = time;
        inner.sink.send(Command::Write { time, updates });
    }

    /// Read the contents of each of `targets` at one common timestamp.
    /// Read each target (all of it, or the rows with the given primary
    /// keys) at the latest write time.
    pub async fn peek(&self, targets: &[PeekTarget]) -> Result<Vec<RecordBatch>, AdapterError> {
        let mut receivers = Vec::new();
        {
            let mut inner = self.inner.lock().expect("controller lock");
            let time = inner.last_write;
            for target in targets {
                let (peek_id, rx) = self.await_answers(&mut inner);
                inner.sink.send(Command::Peek {
                    peek_id,
                    target: target.id,
                    time,
                    keys: target.keys.clone(),
                    columns: target.columns.clone(),
                });
                receivers.push(rx);
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        for (rx, target) in receivers.into_iter().zip(targets) {
            let batches = rx
                .await
                .map_err(|_| AdapterError::Internal("worker went away".into()))?
                .map_err(AdapterError::Evaluation)?;
            let schema = match &target.columns {
                Some(columns) => Arc::new(
                    target
                        .schema
                        .project(columns)
                        .map_err(|e| AdapterError::Internal(e.to_string()))?,
                ),
                None => target.schema.clone(),
            };
            let batch =
                concat_batches(&schema, &batches).map_err(|e| AdapterError::Internal(e.to_string()))?;
            out.push(batch);
        }
        Ok(out)
    }

    /// Wait until every materialized view reading keyed table `table`
    /// has absorbed every write but the newest: a write that does not
    /// read from the workers paces itself by this, so that writes run at
    /// most one step ahead of the dataflows and the views stay fresh.
    pub async fn catch_up(&self, table: GlobalId) -> Result<(), AdapterError> {
        let time = self.inner.lock().expect("controller lock").previous_write;
        self.absorbed(&[table], time).await
    }

    /// Wait until every materialized view reading any of `tables` has
    /// absorbed the write at `time` (a peek for no keys, which the workers
    /// answer that way). Sources pace themselves by this: a commit only
    /// hands rows to the workers, and a source that ran ahead of the views
    /// would pile its rows up in their input queues.
    pub async fn absorbed(&self, tables: &[GlobalId], time: Timestamp) -> Result<(), AdapterError> {
        let receivers: Vec<_> = {
            let mut inner = self.inner.lock().expect("controller lock");
            tables
                .iter()
                .map(|table| {
                    let (peek_id, rx) = self.await_answers(&mut inner);
                    inner.sink.send(Command::Peek {
                        peek_id,
                        target: *table,
                        time,
                        keys: Some(Arc::new(Vec::new())),
                        columns: None,
                    });
                    rx
                })
                .collect()
        };
        for rx in receivers {
            rx.await
                .map_err(|_| AdapterError::Internal("worker went away".into()))?
                .map_err(AdapterError::Evaluation)?;
        }
        Ok(())
    }

    /// A fresh id for a command every worker answers with a batch (a
    /// peek), and where the batches arrive once all have answered.
    fn await_answers(&self, inner: &mut Inner) -> (u64, oneshot::Receiver<Result<Vec<RecordBatch>, String>>) {
        inner.next_id += 1;
        let peek_id = inner.next_id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").peeks.insert(
            peek_id,
            PendingPeek {
                remaining: self.workers,
                batches: Vec::new(),
                error: None,
                reply: Some(tx),
            },
        );
        (peek_id, rx)
    }

    /// Every worker's arrangements, measured now (in
    /// [`weir_protocol::arrangement_sizes_schema`]'s columns).
    pub async fn arrangement_sizes(&self) -> Result<RecordBatch, AdapterError> {
        let rx = {
            let mut inner = self.inner.lock().expect("controller lock");
            let (peek_id, rx) = self.await_answers(&mut inner);
            inner.sink.send(Command::ArrangementSizes { peek_id });
            rx
        };
        let batches = rx
            .await
            .map_err(|_| AdapterError::Internal("worker went away".into()))?
            .map_err(AdapterError::Internal)?;
        concat_batches(&weir_protocol::arrangement_sizes_schema(), &batches)
            .map_err(|e| AdapterError::Internal(e.to_string()))
    }

    /// Start a subscription to `plan`; messages arrive on the receiver until
    /// [`Controller::unsubscribe`].
    pub fn subscribe(&self, plan: Arc<Plan>) -> (u64, Timestamp, mpsc::UnboundedReceiver<SubscribeMessage>) {
        let mut inner = self.inner.lock().expect("controller lock");
        inner.next_id += 1;
        let subscribe_id = inner.next_id;
        let as_of = inner.last_write;
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .expect("pending lock")
            .subscribes
            .insert(subscribe_id, (as_of, tx));
        inner.sink.send(Command::Subscribe {
            subscribe_id,
            plan,
            as_of,
        });
        (subscribe_id, as_of, rx)
    }

    /// Active subscriptions and the times they started at.
    pub fn subscriptions(&self) -> Vec<(u64, Timestamp)> {
        let mut out: Vec<_> = self
            .pending
            .lock()
            .expect("pending lock")
            .subscribes
            .iter()
            .map(|(id, (t, _))| (*id, *t))
            .collect();
        out.sort();
        out
    }

    pub fn unsubscribe(&self, subscribe_id: u64) {
        self.pending
            .lock()
            .expect("pending lock")
            .subscribes
            .remove(&subscribe_id);
        self.send(Command::DropSubscribe { subscribe_id });
    }
}
