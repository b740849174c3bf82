//! Group commit: the one task that owns [`Persist`] and turns writes and
//! DDL into durable metadata versions, then into worker writes.
//!
//! Statements enqueue their changes in the order they took the write lock
//! and then wait; the committer takes everything queued, makes it durable
//! in one metadata version at one fresh timestamp, sends the writes to the
//! workers, and only then acknowledges. Many small concurrent writes thus
//! share one round trip to the store, and nothing a client was told
//! succeeded can be lost, nor seen by anyone before it is durable.
//!
//! Compaction runs beside it: merges are computed by background tasks and
//! swapped in by the committer's next version. If the store fails or
//! another process takes the state over, the committer fails everything
//! pending and raises the fatal signal: the server stops, and a restart
//! recovers from what is durable.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};
use weir_persist::{CatalogOp, Commit, Compacted, Persist, Updates};
use weir_protocol::{TableUpdate, Timestamp};

use crate::controller::Controller;
use crate::error::AdapterError;

type Reply<T> = oneshot::Sender<Result<T, AdapterError>>;

enum Request {
    Write {
        updates: Vec<TableUpdate>,
        /// A source's new resume position, durable with the updates.
        position: Option<(u64, u64)>,
        /// Catalog changes durable with the updates (and the next id).
        catalog: Vec<CatalogOp>,
        next_id: u64,
        done: Reply<Timestamp>,
    },
    Catalog {
        ops: Vec<CatalogOp>,
        next_id: u64,
        done: Reply<()>,
    },
    /// Answered once everything queued before it is applied.
    Barrier { done: Reply<()> },
    /// A materialized view's output changes below `upper`; nobody waits.
    Output {
        shard: u64,
        updates: Vec<Updates>,
        upper: Timestamp,
    },
    Compacted {
        shard: u64,
        result: weir_persist::Result<Compacted>,
    },
}

/// The handle statements use to make changes durable.
#[derive(Clone)]
pub struct Durable {
    tx: mpsc::UnboundedSender<Request>,
    controller: Arc<Controller>,
}

/// A write waiting to become durable.
pub struct PendingWrite(oneshot::Receiver<Result<Timestamp, AdapterError>>);

fn stopped() -> AdapterError {
    AdapterError::StateStore("the server is stopping after a state store failure".into())
}

impl PendingWrite {
    pub async fn wait(mut self) -> Result<Timestamp, AdapterError> {
        self.done().await
    }

    /// Wait without giving the write up (cancel-safe).
    pub async fn done(&mut self) -> Result<Timestamp, AdapterError> {
        (&mut self.0).await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl Durable {
    /// Start the committer. `fatal` receives the reason when the server
    /// must stop.
    pub fn start(
        persist: Persist,
        controller: Arc<Controller>,
        fatal: watch::Sender<Option<String>>,
    ) -> Durable {
        let (tx, rx) = mpsc::unbounded_channel();
        let durable = Durable {
            tx: tx.clone(),
            controller: controller.clone(),
        };
        tokio::spawn(run(persist, controller, rx, tx, fatal));
        durable
    }

    /// Enqueue `updates`; they become durable and visible together, in
    /// enqueue order relative to other writes.
    pub fn write(&self, updates: Vec<TableUpdate>) -> PendingWrite {
        self.write_at_position(updates, None)
    }

    /// Like [`Durable::write`], recording source `position.0`'s resume
    /// position `position.1` in the same step.
    pub fn write_at_position(&self, updates: Vec<TableUpdate>, position: Option<(u64, u64)>) -> PendingWrite {
        self.send_write(updates, position, Vec::new(), 0)
    }

    /// Like [`Durable::write`], with catalog changes `ops` in the same
    /// step: a table created together with its first rows.
    pub fn write_with_catalog(
        &self,
        updates: Vec<TableUpdate>,
        ops: Vec<CatalogOp>,
        next_id: u64,
    ) -> PendingWrite {
        self.send_write(updates, None, ops, next_id)
    }

    fn send_write(
        &self,
        updates: Vec<TableUpdate>,
        position: Option<(u64, u64)>,
        catalog: Vec<CatalogOp>,
        next_id: u64,
    ) -> PendingWrite {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::Write {
            updates,
            position,
            catalog,
            next_id,
            done,
        });
        PendingWrite(rx)
    }

    /// Make catalog changes durable.
    pub async fn catalog(&self, ops: Vec<CatalogOp>, next_id: u64) -> Result<(), AdapterError> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::Catalog { ops, next_id, done });
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Record changes of a materialized view's output, complete below
    /// `upper`, in its shard with the next commit.
    pub fn output(&self, shard: u64, updates: Vec<Updates>, upper: Timestamp) {
        let _ = self.tx.send(Request::Output {
            shard,
            updates,
            upper,
        });
    }

    /// Wait until every materialized view reading any of `tables` has
    /// absorbed the write at `time` (see [`Controller::absorbed`]).
    pub async fn absorbed(&self, tables: &[weir_sql::GlobalId], time: Timestamp) -> Result<(), AdapterError> {
        self.controller.absorbed(tables, time).await
    }

    /// Wait until every write enqueued so far is visible to reads.
    pub async fn barrier(&self) -> Result<(), AdapterError> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::Barrier { done });
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The most requests folded into one metadata version.
const GROUP_LIMIT: usize = 4096;

/// How long a view's output or a merge may wait for a commit that
/// someone waits for before it is committed alone.
const DEFER: std::time::Duration = std::time::Duration::from_millis(50);

enum Ack {
    Write(Reply<Timestamp>),
    Done(Reply<()>),
}

async fn run(
    mut persist: Persist,
    controller: Arc<Controller>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    tx: mpsc::UnboundedSender<Request>,
    fatal: watch::Sender<Option<String>>,
) {
    let mut compacting: HashSet<u64> = HashSet::new();
    // Views' outputs and finished merges, which nobody waits for, held
    // back for the next commit that someone does wait for, or until
    // `DEFER` passes: under a stream of writes each view's output then
    // rides on the next write's metadata version instead of costing a
    // version (and its fsyncs) of its own, which halved the versions a
    // single writing session makes.
    let mut deferred: Vec<Request> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        // `None` when the deadline came first.
        let first = match deadline {
            Some(at) => tokio::select! {
                r = rx.recv() => Some(r),
                () = tokio::time::sleep_until(at) => None,
            },
            None => Some(rx.recv().await),
        };
        let closed = matches!(first, Some(None));
        let mut group = std::mem::take(&mut deferred);
        group.extend(first.flatten());
        while group.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // Nothing held back, nothing received: the channel closed.
        if group.is_empty() {
            return;
        }
        let waited_for = group
            .iter()
            .any(|r| !matches!(r, Request::Output { .. } | Request::Compacted { .. }));
        let due = deadline.is_some_and(|at| tokio::time::Instant::now() >= at);
        if !waited_for && !due && !closed {
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + DEFER);
            deferred = group;
            continue;
        }
        deadline = None;
        let mut commit = Commit::default();
        let mut appends: BTreeMap<u64, Vec<Updates>> = BTreeMap::new();
        let mut writes = Vec::new();
        let mut acks = Vec::new();
        for request in group {
            match request {
                Request::Write {
                    updates,
                    position,
                    catalog,
                    next_id,
                    done,
                } => {
                    commit.positions.extend(position);
                    commit.catalog.extend(catalog);
                    commit.next_id = commit.next_id.max(next_id);
                    for u in &updates {
                        appends
                            .entry(u.table)
                            .or_default()
                            .push(Updates::uniform(u.batch.clone(), u.diff));
                    }
                    writes.extend(updates);
                    acks.push(Ack::Write(done));
                }
                Request::Catalog { ops, next_id, done } => {
                    commit.catalog.extend(ops);
                    commit.next_id = commit.next_id.max(next_id);
                    acks.push(Ack::Done(done));
                }
                Request::Barrier { done } => acks.push(Ack::Done(done)),
                Request::Output {
                    shard,
                    updates,
                    upper,
                } => match commit.outputs.iter_mut().find(|(s, _, _)| *s == shard) {
                    // One batch per shard and version: a shard's batches
                    // follow one another in time.
                    Some((_, held, held_upper)) => {
                        held.extend(updates);
                        *held_upper = (*held_upper).max(upper);
                    }
                    None => commit.outputs.push((shard, updates, upper)),
                },
                Request::Compacted { shard, result } => {
                    compacting.remove(&shard);
                    match result {
                        Ok(c) => commit.compacted.push(c),
                        Err(e) => warn!(shard, error = %e, "compaction failed; it is retried"),
                    }
                }
            }
        }
        let time = (!writes.is_empty()).then(|| controller.next_write_time(persist.state().upper));
        commit.time = time;
        let needs_commit = time.is_some()
            || !commit.positions.is_empty()
            || !commit.catalog.is_empty()
            || !commit.outputs.is_empty()
            || !commit.compacted.is_empty();
        let outcome = if needs_commit {
            commit.appends = appends.into_iter().collect();
            persist.commit(commit).await.map_err(AdapterError::from)
        } else {
            Ok(())
        };
        if let Err(e) = outcome {
            error!(error = %e, "state store failure; stopping");
            for ack in acks {
                match ack {
                    Ack::Write(done) => drop(done.send(Err(e.clone()))),
                    Ack::Done(done) => drop(done.send(Err(e.clone()))),
                }
            }
            let _ = fatal.send(Some(e.to_string()));
            return;
        }
        if let Some(time) = time {
            controller.write_at(time, writes);
        }
        for ack in acks {
            match ack {
                Ack::Write(done) => drop(done.send(Ok(time.unwrap_or_default()))),
                Ack::Done(done) => drop(done.send(Ok(()))),
            }
        }
        for (shard, run) in persist.compactions_due(&compacting) {
            compacting.insert(shard);
            let compactor = persist.compactor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = compactor.compact(shard, run).await;
                let _ = tx.send(Request::Compacted { shard, result });
            });
        }
    }
}
