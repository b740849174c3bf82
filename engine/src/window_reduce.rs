//! A `GROUP BY` over window functions, evaluated per window partition.
//!
//! When every group of a reduction lies inside one partition of the window
//! functions below it (its group keys include the partition's columns, as
//! `GROUP BY bidder, session` over `... OVER (PARTITION BY bidder ...)`
//! does when sessions are numbered with window functions), the windows, the
//! maps and filters between them and the grouping all run in one reduce
//! keyed by the partition: a change to a partition re-evaluates that
//! partition once and emits its groups. Rendered one node at a time, each
//! window would arrange and re-emit every row of the partition, and the
//! reduction would arrange those rows again by group.
//!
//! Where the chain numbers session windows over rows that are only
//! inserted and the groups fold only counts and first and last times,
//! [`crate::sessions`] keeps each partition's sessions instead, and this
//! evaluation is not built.
//!
//! This module owns recognising such a chain ([`fusable`]) and evaluating
//! a partition through it; keying, the reduce and error routing come from
//! [`crate::render`], the window functions from [`crate::window`] and the
//! aggregates from [`crate::reduce`].

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use weir_sql::{AggregateExpr, Plan, PlanNode};

use crate::eval::{RowEval, column_index, encode_group};
use crate::reduce::{GroupFolder, aggregate_schema};
use crate::render::{Coll, Errs, Imports, arrow_schema, keyed, reduce_partitions, render};
use crate::row::{Row, RowCodec};
use crate::window::{PartitionEval, expand};
use crate::{Diff, EngineError, Time};

/// A chain of window and map/filter nodes under a reduction whose groups
/// each lie in one partition of the chain's lowest window.
pub(crate) struct Fusable<'a> {
    /// The input of the lowest window.
    pub(crate) bottom: &'a Plan,
    /// The lowest window's partition, bound against `bottom`.
    pub(crate) partition_by: &'a [Expr],
    /// The window and map/filter nodes, lowest first.
    pub(crate) stages: Vec<&'a Plan>,
}

/// Whether a reduction of `input` by `group_keys` can run per partition of
/// the windows below it, and the chain it would run. Each window of the
/// chain must partition by (at least) the lowest window's partition
/// columns, every map must carry those columns through, and the group
/// keys must include them, all as plain column references. A window
/// bounded by `row_number() <= k` is left to the per-partition top-k.
pub(crate) fn fusable<'a>(input: &'a Plan, group_keys: &[Expr]) -> Option<Fusable<'a>> {
    if group_keys.is_empty() {
        return None;
    }
    let mut stages = Vec::new();
    let mut node = input;
    while let PlanNode::MapFilterProject { input, .. } | PlanNode::Window { input, .. } = &node.node {
        stages.push(node);
        node = input;
    }
    // Maps below the lowest window are its input, rendered as usual.
    while stages
        .last()
        .is_some_and(|p| matches!(p.node, PlanNode::MapFilterProject { .. }))
    {
        stages.pop();
    }
    stages.reverse();
    let PlanNode::Window {
        input: bottom,
        partition_by,
        ..
    } = &stages.first()?.node
    else {
        return None;
    };
    let mut columns: Vec<usize> = partition_by
        .iter()
        .map(|e| column_index(e, &bottom.schema))
        .collect::<Option<_>>()?;
    for stage in &stages {
        match &stage.node {
            // A window keeps its input's columns in place.
            PlanNode::Window {
                input, partition_by, ..
            } => {
                let own: Vec<usize> = partition_by
                    .iter()
                    .map(|e| column_index(e, &input.schema))
                    .collect::<Option<_>>()?;
                if !columns.iter().all(|c| own.contains(c)) {
                    return None;
                }
            }
            PlanNode::MapFilterProject {
                input,
                filters,
                projection,
            } => {
                // A per-partition top-k keeps k rows of a partition, not
                // all of them: it stays as it is.
                if crate::rank::RankPrefix::of(input, filters).is_some() {
                    return None;
                }
                columns = columns
                    .iter()
                    .map(|c| {
                        projection
                            .iter()
                            .position(|e| column_index(e, &input.schema) == Some(*c))
                    })
                    .collect::<Option<_>>()?;
            }
            _ => return None,
        }
    }
    let keys: Vec<usize> = group_keys
        .iter()
        .filter_map(|e| column_index(e, &input.schema))
        .collect();
    columns.iter().all(|c| keys.contains(c)).then_some(Fusable {
        bottom,
        partition_by,
        stages,
    })
}

/// One step of a partition's evaluation.
enum Stage {
    /// Append the window functions' values.
    Window(PartitionEval, SchemaRef),
    /// Filter, then compute the projection.
    Map(Box<RowEval>, SchemaRef),
}

/// Evaluates one partition through the chain and groups the result.
struct PartitionReduce {
    input: RowCodec,
    stages: Vec<Stage>,
    /// Group keys, then the aggregates' arguments.
    group: RowEval,
    keys: RowCodec,
    folder: GroupFolder,
    output: RowCodec,
}

impl PartitionReduce {
    /// The partition's groups, each as its key row followed by its
    /// aggregates. `rows` are the partition's distinct input rows in
    /// encoded order with their counts.
    fn evaluate(&self, rows: &[(&[u8], Diff)]) -> Result<Vec<(Row, Diff)>, String> {
        let expanded = expand(rows);
        if expanded.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = self
            .input
            .decode(expanded.into_iter())
            .map_err(|e| e.to_string())?;
        for stage in &self.stages {
            batch = match stage {
                Stage::Window(eval, schema) => {
                    let mut columns = batch.columns().to_vec();
                    columns.extend(eval.columns(&batch)?);
                    batch_of(schema, columns, batch.num_rows())
                }
                Stage::Map(eval, schema) => {
                    let ev = eval.eval_batch(&batch)?;
                    let n = ev.kept.len();
                    batch_of(schema, ev.outputs.into_iter().next().unwrap_or_default(), n)
                }
            }?;
            if batch.num_rows() == 0 {
                return Ok(Vec::new());
            }
        }
        let ev = self.group.eval_batch(&batch)?;
        let keys = encode_group(&self.keys, &ev, 0)?;
        // Rows of a group next to each other, then each group folded.
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_by(|a, b| keys[*a as usize].cmp(&keys[*b as usize]));
        let order = UInt32Array::from(order);
        let args: Vec<ArrayRef> = ev.outputs[1]
            .iter()
            .map(|a| take(a, &order, None))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let args = batch_of(&self.folder.arg_schema, args, order.len())?;
        let order = order.values();
        let mut out = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let key = &keys[order[start] as usize];
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|i| keys[**i as usize] == *key)
                    .count();
            let counts = vec![1; end - start];
            let values = self
                .folder
                .values_row(&args.slice(start, end - start), &counts, &self.output)?;
            out.push((Row::concat(key, &values), 1));
            start = end;
        }
        Ok(out)
    }
}

/// `columns` as a batch of `num_rows` rows of `schema`.
fn batch_of(schema: &SchemaRef, columns: Vec<ArrayRef>, num_rows: usize) -> Result<RecordBatch, String> {
    let options = RecordBatchOptions::new().with_row_count(Some(num_rows));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|e| e.to_string())
}

/// `schema` with every field nullable: a stage's values are checked by
/// the types the plan gave them, not by nullability the planner inferred.
fn nullable(schema: &DFSchema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .as_arrow()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Render `plan`, a reduction of `fused`'s chain by `group_keys`, as one
/// reduce per partition.
pub(crate) fn render_fused<'s>(
    plan: &Plan,
    fused: Fusable<'_>,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    scope: timely::dataflow::Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let (ok, err) = render(fused.bottom, scope, imports)?;
    let mut stages = Vec::with_capacity(fused.stages.len());
    for stage in &fused.stages {
        stages.push(match &stage.node {
            PlanNode::Window { input, functions, .. } => Stage::Window(
                PartitionEval::new(&input.schema, functions, &stage.schema)?,
                nullable(&stage.schema),
            ),
            PlanNode::MapFilterProject {
                input,
                filters,
                projection,
            } => Stage::Map(
                Box::new(RowEval::new(&input.schema, filters, &[projection])?),
                nullable(&stage.schema),
            ),
            _ => unreachable!("fusable chains hold windows and maps only"),
        });
    }
    let input = &fused.stages.last().expect("a fusable chain has a window").schema;
    let (args, folder) = GroupFolder::new(aggregates, input)?;
    let n_keys = group_keys.len();
    let reduce = PartitionReduce {
        input: RowCodec::new(arrow_schema(&fused.bottom.schema))?,
        stages,
        group: RowEval::new(input, &[], &[group_keys, &args])?,
        keys: RowCodec::new(Arc::new(Schema::new(
            plan.schema.as_arrow().fields()[..n_keys].to_vec(),
        )))?,
        folder,
        output: RowCodec::new(aggregate_schema(aggregates))?,
    };
    let (keyed, kerr) = keyed(
        ok,
        &fused.bottom.schema,
        fused.partition_by,
        true,
        "WindowPartition",
    )?;
    let (rows, errs) = reduce_partitions(keyed, "WindowReduce", move |rows| reduce.evaluate(rows));
    Ok((rows, err.concat(kerr).concat(errs)))
}
