//! The command protocol between the coordinator and a worker cluster.
//!
//! Commands and responses are plain data. Every worker receives the same
//! ordered command stream (timely requires every worker to build dataflows in
//! the same order); each worker answers for its own shard. Today the stream is
//! carried over in-process channels; the same types are what a gRPC transport
//! will carry for a multi-process cluster. The coordinator depends on this
//! crate and never on the engine.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use weir_sql::{GlobalId, Plan};

/// Weir time: milliseconds since the Unix epoch, issued by the coordinator's
/// timestamp oracle.
pub type Timestamp = u64;

/// An instruction, broadcast to every worker in the same order.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create the input collection of a table, readable at `upper` onwards.
    CreateTable {
        id: GlobalId,
        name: String,
        schema: SchemaRef,
        /// Primary-key columns: a keyed table is arranged by its key, so
        /// peeks can look rows up by key.
        key: Vec<usize>,
        /// Rows are only ever inserted (a load generator's or a file
        /// source's table): reductions over it keep `min`/`max` as one
        /// running value instead of a hierarchy that can take values back.
        append_only: bool,
    },
    /// Build a dataflow computing `plan`, arranged under `id` so that peeks,
    /// subscriptions and later dataflows can read it.
    CreateDataflow {
        id: GlobalId,
        name: String,
        plan: Arc<Plan>,
    },
    /// Drop a table's input or a dataflow, and the arrangements it owns.
    Drop { id: GlobalId },
    /// Apply updates to tables at `time`, atomically; afterwards every input
    /// is closed up to `time + 1`. Reads are never issued earlier than the
    /// latest write, so workers also compact history up to `time`.
    Write {
        time: Timestamp,
        updates: Vec<TableUpdate>,
    },
    /// Read the contents of `target` as of `time`, once every worker's copy
    /// is complete through it.
    Peek {
        peek_id: u64,
        target: GlobalId,
        time: Timestamp,
        /// Only the rows with these primary keys (arrow-row encoded key
        /// columns), for a keyed table; `None` reads everything.
        keys: Option<Arc<Vec<Vec<u8>>>>,
        /// Only these columns, in this order; `None` reads them all. An
        /// empty list counts the rows without decoding any (`count(*)`).
        columns: Option<Arc<Vec<usize>>>,
    },
    /// Stream the contents of `plan` at `as_of` and then every change.
    Subscribe {
        subscribe_id: u64,
        plan: Arc<Plan>,
        as_of: Timestamp,
    },
    /// Stop a subscription and drop its dataflow.
    DropSubscribe { subscribe_id: u64 },
    /// Measure every arrangement the worker holds; answered as a peek,
    /// one row per arrangement in [`arrangement_sizes_schema`]'s columns.
    ArrangementSizes { peek_id: u64 },
    /// Stop every worker.
    Shutdown,
}

/// The columns of a worker's answer to [`Command::ArrangementSizes`]: the
/// relation whose dataflow holds the arrangement (NULL for a
/// subscription's), the arranging operator's name, the worker, the trace's
/// batches, its updates, the bytes they occupy and the bytes allocated.
pub fn arrangement_sizes_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("relation_id", DataType::Int64, true),
        Field::new("operator", DataType::Utf8, false),
        Field::new("worker", DataType::Int64, false),
        Field::new("batches", DataType::Int64, false),
        Field::new("records", DataType::Int64, false),
        Field::new("size_bytes", DataType::Int64, false),
        Field::new("capacity_bytes", DataType::Int64, false),
    ]))
}

/// Rows to add (`diff > 0`) or remove (`diff < 0`) from one table.
#[derive(Debug, Clone)]
pub struct TableUpdate {
    pub table: GlobalId,
    pub batch: RecordBatch,
    pub diff: i64,
}

/// A worker's answer.
#[derive(Debug)]
pub enum Response {
    /// One worker's share of a peek: rows with positive multiplicity
    /// expanded, or the error the relation holds at that time.
    Peek {
        peek_id: u64,
        worker: usize,
        result: Result<RecordBatch, String>,
    },
    /// One worker's changes for a subscription at times before `upper`,
    /// in parts (a log's batches are sent as they are held, not
    /// concatenated).
    SubscribeBatch {
        subscribe_id: u64,
        worker: usize,
        upper: Option<Timestamp>,
        update: Result<Vec<SubscribeUpdate>, String>,
    },
}

/// Changes to a subscribed relation. `times` and `diffs` are parallel to
/// the rows of `batch`.
#[derive(Debug, Clone)]
pub struct SubscribeUpdate {
    pub batch: RecordBatch,
    pub times: Vec<Timestamp>,
    pub diffs: Vec<i64>,
}

/// Where the coordinator sends commands: the in-process cluster today, a
/// gRPC client of remote workers later.
pub trait CommandSink: Send {
    /// Broadcast one command to every worker, in order.
    fn send(&mut self, command: Command);
    /// The number of workers answering each peek and subscription.
    fn workers(&self) -> usize;
}

/// The channel workers answer on.
pub type ResponseSender = tokio::sync::mpsc::UnboundedSender<Response>;
pub type ResponseReceiver = tokio::sync::mpsc::UnboundedReceiver<Response>;
