//! Recording materialized views' outputs into their shards.
//!
//! Each materialized view has a recorder: a subscription to the view as it
//! stands (answered from each worker's log of the view's output, as the
//! Arrow batches it holds) whose changes, once every worker is complete
//! through a time, go to the committer as output batches, uncopied where
//! they hold no deletion. The shard therefore holds the
//! view's contents as of its last batch, readable without running the
//! dataflow (a sink, another cluster, a person with an Arrow reader).
//!
//! After a restart the view is recomputed from its inputs, and its first
//! snapshot is reconciled against what the shard already holds: only the
//! difference is appended, so a shard never counts a row twice and catches
//! up on changes a crash kept from being recorded.
//!
//! This module only reads the view through the controller and writes
//! through [`Durable`]; it decides nothing about what the view contains.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use tracing::warn;
use weir_persist::Updates;
use weir_protocol::Timestamp;
use weir_sql::{GlobalId, Plan, PlanNode};

use crate::controller::Controller;
use crate::durable::Durable;

/// Unsubscribes when the recorder stops (or is aborted by a drop).
struct Unsubscribe(Arc<Controller>, u64);

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.0.unsubscribe(self.1);
    }
}

/// Start recording the output of the materialized view `id` (named
/// `name`, rows of `schema`). `stored` is what its shard already holds.
pub fn start(
    controller: Arc<Controller>,
    durable: Durable,
    id: GlobalId,
    name: String,
    schema: SchemaRef,
    stored: Option<Updates>,
) -> Result<tokio::task::JoinHandle<()>, datafusion::error::DataFusionError> {
    let plan = Plan {
        node: PlanNode::Get {
            id,
            name: name.clone(),
        },
        schema: Arc::new(DFSchema::try_from_qualified_schema(name.as_str(), &schema)?),
    };
    let (subscribe_id, as_of, mut messages) = controller.subscribe(Arc::new(plan));
    let workers = controller.workers();
    let guard = Unsubscribe(controller, subscribe_id);
    Ok(tokio::spawn(async move {
        let _guard = guard;
        // Each worker's progress: Some(t) = complete below t; None = done.
        let mut uppers: Vec<Option<Timestamp>> = vec![Some(0); workers];
        let mut recorded: Timestamp = 0;
        // Changes not yet complete, as (rows, times, diffs); the stored
        // contents are taken back out at the snapshot's time.
        let mut pending: Vec<(RecordBatch, Vec<Timestamp>, Vec<i64>)> = stored
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                let n = s.len();
                (s.batch, vec![as_of; n], s.diffs.iter().map(|d| -d).collect())
            })
            .collect();
        while let Some((worker, upper, update)) = messages.recv().await {
            let update = match update {
                Ok(u) => u,
                Err(e) => {
                    warn!(view = name, error = %e, "the view holds an error; its output is not recorded until a restart");
                    return;
                }
            };
            pending.extend(
                update
                    .into_iter()
                    .filter(|u| u.batch.num_rows() > 0)
                    .map(|u| (u.batch, u.times, u.diffs)),
            );
            if let Some(u) = uppers.get_mut(worker) {
                *u = upper;
            }
            let done = uppers.iter().all(Option::is_none);
            let Some(frontier) = uppers
                .iter()
                .flatten()
                .min()
                .copied()
                .or(done.then_some(Timestamp::MAX))
            else {
                continue;
            };
            if frontier <= recorded {
                continue;
            }
            let mut ready = Vec::new();
            for (batch, times, diffs) in std::mem::take(&mut pending) {
                if times.iter().all(|t| *t < frontier) {
                    // All of it is complete: no copy.
                    ready.push(Updates { batch, diffs });
                    continue;
                }
                let (now, later): (Vec<usize>, Vec<usize>) =
                    (0..times.len()).partition(|i| times[*i] < frontier);
                if !now.is_empty() {
                    ready.push(Updates {
                        batch: take(&batch, &now),
                        diffs: now.iter().map(|i| diffs[*i]).collect(),
                    });
                }
                if !later.is_empty() {
                    pending.push((
                        take(&batch, &later),
                        later.iter().map(|i| times[*i]).collect(),
                        later.iter().map(|i| diffs[*i]).collect(),
                    ));
                }
            }
            recorded = frontier;
            if ready.is_empty() {
                continue;
            }
            match weir_persist::batch::consolidate_parts(&schema, ready) {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => durable.output(id, changes, frontier),
                Err(e) => {
                    warn!(view = name, error = %e, "cannot record the view's output");
                    return;
                }
            }
            if done {
                return;
            }
        }
    }))
}

fn take(batch: &RecordBatch, rows: &[usize]) -> RecordBatch {
    let indices = arrow::array::UInt32Array::from_iter_values(rows.iter().map(|i| *i as u32));
    arrow::compute::take_record_batch(batch, &indices).expect("indices are in range")
}
