//! Inner joins with a side computed from constants alone: `FROM t,
//! (VALUES ...)` (Nexmark q5's five windows of each bid) and `JOIN
//! (SELECT ... FROM generate_series(...)) s ON f(t) = s.key` (q13's side
//! table). The constant side is evaluated once, when the dataflow is
//! built, into a table from key to rows that every worker holds; each row
//! of the other side meets its partners where it is, as it arrives. As a
//! join, every row of the other side would be arranged for good, to meet
//! changes of a side that never changes (and, without keys, all of them
//! under the one empty key, on one worker).
//!
//! This module owns recognising such a side and the lookup; it must not
//! change what the join means: a side it cannot evaluate here (an error,
//! a volatile function) is rendered as any other join's.

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use differential_dataflow::AsCollection;
use weir_sql::{Plan, PlanNode};

use crate::eval::{RowEval, any_null, encode_group, expr_fields};
use crate::render::{Coll, ErrRow, Errs, arrow_schema, batch_map, combine, keep_passing, keyed};
use crate::row::{Row, RowCodec};
use crate::{Diff, EngineError, Time};

/// The rows of `plan` where they follow from constants alone: a
/// `Constant`, or maps and filters of one without volatile functions.
/// `None` for anything else, and where evaluating fails (the dataflow
/// then evaluates it row by row and reports the error as usual).
fn static_batch(plan: &Plan) -> Option<RecordBatch> {
    match &plan.node {
        PlanNode::Constant { batch } => Some(batch.clone()),
        PlanNode::MapFilterProject {
            input,
            filters,
            projection,
        } => {
            if filters.iter().chain(projection).any(Expr::is_volatile) {
                return None;
            }
            let batch = static_batch(input)?;
            let ev = RowEval::new(&input.schema, filters, &[projection])
                .ok()?
                .eval_batch(&batch)
                .ok()?;
            let options = RecordBatchOptions::new().with_row_count(Some(ev.kept.len()));
            let columns = ev.outputs.into_iter().next()?;
            let codec = RowCodec::new(arrow_schema(&plan.schema)).ok()?;
            let columns = codec.conform(&columns).ok()?;
            RecordBatch::try_new_with_options(arrow_schema(&plan.schema), columns, &options).ok()
        }
        _ => None,
    }
}

/// Who a row of the other side meets.
enum Partners {
    /// Every constant row (a join without keys).
    All(Vec<Row>),
    /// The constant rows under the row's key.
    ByKey(hashbrown::HashMap<Vec<u8>, Vec<Row>>),
}

impl Partners {
    /// Whether some row meets more than one constant row: equal rows of
    /// the other side are then worth summing before they meet them.
    fn fan_out(&self) -> bool {
        match self {
            Partners::All(rows) => rows.len() > 1,
            Partners::ByKey(table) => table.values().any(|rows| rows.len() > 1),
        }
    }
}

/// An inner join's side computed from constants, with its join keys, and
/// the other side with its own.
pub(crate) struct ConstantSide<'a> {
    plan: &'a Plan,
    batch: RecordBatch,
    keys: &'a [Expr],
    /// Whether it is the join's left input.
    left: bool,
    pub other: &'a Plan,
    other_keys: &'a [Expr],
}

impl<'a> ConstantSide<'a> {
    /// The side of the join of `left` and `right` (on `left_keys =
    /// right_keys`) computed from constants, the right one where both are.
    pub(crate) fn of(
        left: &'a Plan,
        right: &'a Plan,
        left_keys: &'a [Expr],
        right_keys: &'a [Expr],
    ) -> Option<Self> {
        let side = |plan: &'a Plan, keys, other, other_keys, left| {
            static_batch(plan).map(|batch| ConstantSide {
                plan,
                batch,
                keys,
                left,
                other,
                other_keys,
            })
        };
        side(right, right_keys, left, left_keys, false)
            .or_else(|| side(left, left_keys, right, right_keys, true))
    }
}

/// The inner join of `other` (the rendered [`ConstantSide::other`]) with
/// `constant`, `residual` applied to the joined rows (of `joined`, the
/// left side's columns then the right's).
pub(crate) fn join_constant<'s>(
    (ok, err): (Coll<'s>, Errs<'s>),
    constant: ConstantSide<'_>,
    nulls_equal: bool,
    joined: &DFSchema,
    residual: Option<&Expr>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let rows = RowCodec::new(arrow_schema(&constant.plan.schema))?
        .encode(constant.batch.columns(), constant.batch.num_rows())?;
    let partners = if constant.keys.is_empty() {
        Partners::All(rows)
    } else {
        let ev = RowEval::new(&constant.plan.schema, &[], &[constant.keys])?
            .eval_batch(&constant.batch)
            .map_err(EngineError::Expression)?;
        let codec = RowCodec::new(Arc::new(arrow::datatypes::Schema::new(expr_fields(
            constant.keys,
            &constant.plan.schema,
            "k",
        )?)))?;
        let keys = encode_group(&codec, &ev, 0).map_err(EngineError::Expression)?;
        let mut table = hashbrown::HashMap::<Vec<u8>, Vec<Row>>::new();
        for (pos, (key, i)) in keys.into_iter().zip(&ev.kept).enumerate() {
            if nulls_equal || !any_null(&ev.outputs[0], pos) {
                table.entry(key.to_vec()).or_default().push(rows[*i].clone());
            }
        }
        Partners::ByKey(table)
    };
    let eval = residual
        .map(|e| RowEval::new(joined, std::slice::from_ref(e), &[]))
        .transpose()?;
    let constant_left = constant.left;
    // Equal rows (bids of one auction in one window slice, once the
    // slice is computed below the join) meet their partners once, with
    // their multiplicity.
    let fan_out = partners.fan_out();
    let each = match &partners {
        Partners::All(rows) => rows.len(),
        Partners::ByKey(_) => 1,
    };
    let pair = move |key: &[u8], row: &Row, t: &Time, d: &Diff, out: &mut Vec<(Row, Time, Diff)>| {
        let partners = match &partners {
            Partners::All(rows) => rows.as_slice(),
            Partners::ByKey(table) => table.get(key).map_or(&[][..], Vec::as_slice),
        };
        for c in partners {
            let (first, second) = if constant_left { (c, row) } else { (row, c) };
            out.push((Row::concat(first, second), *t, *d));
        }
    };
    let finish = move |out: &mut Vec<(Row, Time, Diff)>,
                       oks: &mut Vec<(Row, Time, Diff)>,
                       errs: &mut Vec<ErrRow>| match &eval {
        None => oks.append(out),
        Some(eval) => {
            let rows: Vec<&[u8]> = out.iter().map(|(r, _, _)| r.as_slice()).collect();
            keep_passing(eval, &rows, out, oks, errs);
            out.clear();
        }
    };
    let (rows, errs) = if constant.keys.is_empty() {
        let ok = if fan_out {
            combine(ok, "JoinConstantCombine")
        } else {
            ok
        };
        batch_map(
            ok,
            "JoinConstant",
            move |data: &mut Vec<(Row, Time, Diff)>, oks, errs| {
                let mut out = Vec::with_capacity(data.len() * each);
                for (row, t, d) in data {
                    pair(&[], row, t, d, &mut out);
                }
                finish(&mut out, oks, errs);
            },
        )
    } else {
        let (probes, key_errs) = keyed(
            ok,
            &constant.other.schema,
            constant.other_keys,
            nulls_equal,
            "JoinConstantKey",
        )?;
        let probes = if fan_out {
            combine(probes, "JoinConstantCombine")
        } else {
            probes
        };
        let (rows, errs) = batch_map(
            probes,
            "JoinConstant",
            move |data: &mut Vec<((Row, Row), Time, Diff)>, oks, errs| {
                let mut out = Vec::with_capacity(data.len());
                for ((key, row), t, d) in data {
                    pair(key, row, t, d, &mut out);
                }
                finish(&mut out, oks, errs);
            },
        );
        (rows, errs.concat(key_errs))
    };
    Ok((rows.as_collection(), err.concat(errs)))
}
