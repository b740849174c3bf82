//! `row_number()` under a filter that keeps its first ranks: the per-group
//! TopK of `SELECT ... FROM (SELECT *, row_number() OVER (PARTITION BY p
//! ORDER BY o) AS rn FROM t) WHERE rn <= k` (Nexmark q18 and q19).
//!
//! The window path ([`crate::window`]) decodes every touched partition to
//! Arrow and numbers all of its rows with DataFusion, only for the filter
//! to drop all but k of them. Here each row is keyed by its partition and
//! carries its encoded sort key; a reduction over the partition's rows, in
//! the order differential keeps them (sort key, then the encoded row, the
//! very order and tie-break the window path numbers them in), emits the
//! first k rows with their numbers, encoded as the window path encodes
//! them. The filter and projection above the window are still applied to
//! the result unchanged, so a bound recognised here only ever drops rows
//! the filter would drop. This module owns that recognition and rendering.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::compute::{SortOptions, cast};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, SortExpr};
use differential_dataflow::AsCollection;
use weir_sql::{Plan, PlanNode};

use crate::eval::{RowEval, encode_group, expr_fields};
use crate::render::{Coll, Errs, batch_map, for_each_evaluated};
use crate::row::{Row, RowCodec};
use crate::{Diff, EngineError, Time};

/// Bounds beyond this are left to the window path.
const MOST: usize = 1_000;

/// A window node whose only function is `row_number()`, under filters
/// that bound its number from above.
pub(crate) struct RankPrefix<'a> {
    /// The window's input.
    pub input: &'a Plan,
    partition_by: &'a [Expr],
    order: &'a [SortExpr],
    /// The number's field in the window's output.
    number: Field,
    /// How many leading rows of each partition the filters can keep.
    keep: usize,
}

impl<'a> RankPrefix<'a> {
    /// `window` and the `filters` applied to its output, if they are such.
    pub fn of(window: &'a Plan, filters: &[Expr]) -> Option<Self> {
        let PlanNode::Window {
            input,
            partition_by,
            functions,
        } = &window.node
        else {
            return None;
        };
        let [function] = functions.as_slice() else {
            return None;
        };
        let Expr::WindowFunction(f) = strip_alias(function) else {
            return None;
        };
        let p = &f.params;
        if f.fun.name() != "row_number"
            || !p.args.is_empty()
            || p.filter.is_some()
            || p.distinct
            || &p.partition_by != partition_by
        {
            return None;
        }
        let at = input.schema.fields().len();
        let keep = filters
            .iter()
            .filter_map(|e| bound(e, &window.schema, at))
            .min()?;
        Some(RankPrefix {
            input,
            partition_by,
            order: &p.order_by,
            number: window.schema.field(at).as_ref().clone(),
            keep,
        })
    }

    /// The window's output rows that the filters can keep, from `ok`, the
    /// window input's rows.
    pub fn render<'s>(&self, ok: Coll<'s>) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
        let schema = &self.input.schema;
        let order: Vec<Expr> = self.order.iter().map(|s| s.expr.clone()).collect();
        let eval = RowEval::new(schema, &[], &[self.partition_by, &order])?;
        let partition = RowCodec::new(Arc::new(Schema::new(expr_fields(
            self.partition_by,
            schema,
            "k",
        )?)))?;
        let options = self
            .order
            .iter()
            .map(|s| SortOptions {
                descending: !s.asc,
                nulls_first: s.nulls_first,
            })
            .collect();
        let sort = RowCodec::with_options(Arc::new(Schema::new(expr_fields(&order, schema, "o")?)), options)?;
        // Every number this operator can emit, encoded once.
        let numbers: ArrayRef = Arc::new(UInt64Array::from_iter_values(1..=self.keep as u64));
        let numbers =
            cast(&numbers, self.number.data_type()).map_err(|e| EngineError::Expression(e.to_string()))?;
        let numbers =
            RowCodec::new(Arc::new(Schema::new(vec![self.number.clone()])))?.encode(&[numbers], self.keep)?;
        let (keyed, errs) = batch_map(ok, "RankKeys", move |data: &[(Row, Time, Diff)], oks, errs| {
            let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
            for_each_evaluated(&eval, &rows, errs, data, |indices, ev, errs| match encode_group(
                &partition, ev, 0,
            )
            .and_then(|p| Ok((p, encode_group(&sort, ev, 1)?)))
            {
                Ok((p, s)) => {
                    for ((i, p), s) in indices.iter().zip(p).zip(s) {
                        let (r, t, d) = &data[*i];
                        oks.push(((p, (s, r.clone())), *t, *d));
                    }
                }
                Err(e) => indices
                    .iter()
                    .for_each(|i| errs.push((e.clone(), data[*i].1, data[*i].2))),
            });
        });
        let keyed: differential_dataflow::VecCollection<'s, Time, (Row, (Row, Row)), Diff> =
            keyed.as_collection();
        let top = keyed
            .reduce_named(
                "RankPrefix",
                move |_partition, input: &[(&(Row, Row), Diff)], output: &mut Vec<(Row, Diff)>| {
                    let copies = input
                        .iter()
                        .flat_map(|((_, row), count)| std::iter::repeat_n(row, (*count).max(0) as usize));
                    for (row, number) in copies.zip(&numbers) {
                        output.push((Row::concat(row, number), 1));
                    }
                },
            )
            .map(|(_partition, row)| row);
        Ok((top, errs))
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// How many leading numbers `filter` can keep, where it bounds the column
/// at index `at` of `schema` from above by a constant.
fn bound(filter: &Expr, schema: &DFSchema, at: usize) -> Option<usize> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
        return None;
    };
    let is_number = |e: &Expr| {
        let mut e = e;
        while let Expr::Cast(c) = e {
            e = &c.expr;
        }
        matches!(e, Expr::Column(c) if schema.index_of_column(c).ok() == Some(at))
    };
    let constant = |e: &Expr| match e {
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(n)) => Some(n),
            _ => None,
        },
        _ => None,
    };
    let (n, op) = if is_number(left) {
        (constant(right)?, *op)
    } else if is_number(right) {
        (constant(left)?, op.swap()?)
    } else {
        return None;
    };
    let last = match op {
        Operator::LtEq | Operator::Eq => n,
        Operator::Lt => n - 1,
        _ => return None,
    };
    (last <= MOST as i64).then(|| last.max(0) as usize)
}
