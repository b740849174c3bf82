//! Filters decided on encoded rows, without decoding them.
//!
//! `arrow-row` encodes a fixed-width integer, date, time, timestamp or
//! decimal so that its bytes order as its value does, after a byte that
//! marks NULL. A conjunction of comparisons between such columns, or
//! between a column and a literal of its type, is therefore decided by
//! comparing bytes: a join's `b.date_time BETWEEN a.date_time AND
//! a.expires` costs a few word compares per match, where evaluating it
//! decoded every matched row to Arrow. This module owns that decision and
//! nothing else; any other filter is left to [`crate::eval::RowEval`].
//! Floats are left out: their encoding orders `-0` before `0` and NaN
//! above everything, which SQL's comparison does not.

use arrow::compute::SortOptions;
use arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use crate::eval::column_index;
use crate::row::{RowCodec, compare_bytes};
use crate::spans::{Layout, span};

/// The other side of a comparison.
#[derive(Debug)]
enum Operand {
    Column(usize),
    /// A literal encoded as a value of the column's type (never NULL).
    Literal(Vec<u8>),
}

/// `column op operand`.
#[derive(Debug)]
struct Term {
    column: usize,
    op: Operator,
    operand: Operand,
}

/// A conjunction of comparisons decided on a row's bytes.
#[derive(Debug)]
pub struct ByteFilter {
    layout: Layout,
    terms: Vec<Term>,
    /// How many leading columns a row is walked through.
    walk: usize,
}

impl ByteFilter {
    /// The filter that keeps the rows of `schema` passing every one of
    /// `filters`, when each is such a comparison (or a conjunction or
    /// `BETWEEN` of them); `None` otherwise, or when there are none.
    pub fn new(filters: &[Expr], schema: &DFSchema) -> Option<ByteFilter> {
        let mut terms = Vec::new();
        for f in filters {
            conjuncts(f, schema, &mut terms)?;
        }
        if terms.is_empty() {
            return None;
        }
        let arrow = schema.as_arrow();
        let layout = Layout::of(arrow, &vec![SortOptions::default(); arrow.fields().len()])?;
        let walk = terms
            .iter()
            .map(|t| match t.operand {
                Operand::Column(c) => t.column.max(c) + 1,
                Operand::Literal(_) => t.column + 1,
            })
            .max()
            .unwrap_or(0);
        Some(ByteFilter { layout, terms, walk })
    }

    /// Whether `row` passes (a comparison with NULL does not); `None` when
    /// `row` is not a row of the schema. `ends` is scratch space.
    pub fn passes(&self, row: &[u8], ends: &mut Vec<usize>) -> Option<bool> {
        self.layout.ends(row, self.walk, ends)?;
        for t in &self.terms {
            let left = &row[span(ends, t.column)];
            if self.layout.is_null(t.column, left) {
                return Some(false);
            }
            let right = match &t.operand {
                Operand::Column(c) => {
                    let right = &row[span(ends, *c)];
                    if self.layout.is_null(*c, right) {
                        return Some(false);
                    }
                    right
                }
                Operand::Literal(bytes) => bytes.as_slice(),
            };
            let order = compare_bytes(left, right);
            let holds = match t.op {
                Operator::Eq => order.is_eq(),
                Operator::NotEq => order.is_ne(),
                Operator::Lt => order.is_lt(),
                Operator::LtEq => order.is_le(),
                Operator::Gt => order.is_gt(),
                Operator::GtEq => order.is_ge(),
                _ => unreachable!("only comparisons are kept"),
            };
            if !holds {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// Add the comparisons `e` is a conjunction of to `terms`; `None` when
/// some part of it is not one.
fn conjuncts(e: &Expr, schema: &DFSchema, terms: &mut Vec<Term>) -> Option<()> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            conjuncts(left, schema, terms)?;
            conjuncts(right, schema, terms)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            terms.push(comparison(left, *op, right, schema)?);
            Some(())
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            terms.push(comparison(expr, Operator::GtEq, low, schema)?);
            terms.push(comparison(expr, Operator::LtEq, high, schema)?);
            Some(())
        }
        _ => None,
    }
}

/// `left op right` as a term with a column on its left.
fn comparison(left: &Expr, op: Operator, right: &Expr, schema: &DFSchema) -> Option<Term> {
    if !matches!(
        op,
        Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) {
        return None;
    }
    let (column, op, other) = match column_index(left, schema) {
        Some(c) => (c, op, right),
        None => (column_index(right, schema)?, op.swap()?, left),
    };
    let t = schema.field(column).data_type();
    if !ordered_as_bytes(t) {
        return None;
    }
    let operand = match column_index(other, schema) {
        Some(c) if schema.field(c).data_type() == t => Operand::Column(c),
        Some(_) => return None,
        None => Operand::Literal(encoded_literal(other, t)?),
    };
    Some(Term { column, op, operand })
}

/// Whether values of `t` order as their encodings do.
fn ordered_as_bytes(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Date32
            | Date64
            | Time32(_)
            | Time64(_)
            | Timestamp(..)
            | Duration(_)
            | Decimal32(..)
            | Decimal64(..)
            | Decimal128(..)
            | Decimal256(..)
    )
}

/// The encoding of literal `e` as a value of type `t`; `None` for any
/// other expression, a literal of another type, or NULL.
fn encoded_literal(e: &Expr, t: &DataType) -> Option<Vec<u8>> {
    let value: &ScalarValue = match e {
        Expr::Literal(v, _) => v,
        Expr::Alias(a) => return encoded_literal(&a.expr, t),
        _ => return None,
    };
    if value.is_null() || &value.data_type() != t {
        return None;
    }
    let array = value.to_array().ok()?;
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new("v", t.clone(), true)]);
    let codec = RowCodec::new(std::sync::Arc::new(schema)).ok()?;
    let row = codec.encode(&[array], 1).ok()?.pop()?;
    Some(row.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::logical_expr::{col, lit};

    use crate::eval::RowEval;

    /// Columns with NULLs, negatives and equal neighbours.
    fn batch() -> RecordBatch {
        let n = 64;
        let v = |i: usize, m: i64| (i % 7 != 3).then_some((i as i64 * m) % 23 - 11);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter((0..n).map(|i| v(i, 5)))),
            Arc::new(Int64Array::from_iter((0..n).map(|i| v(i, 3)))),
            Arc::new(TimestampMillisecondArray::from_iter((0..n).map(|i| v(i, 7)))),
            Arc::new(TimestampMillisecondArray::from_iter((0..n).map(|i| v(i + 1, 2)))),
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| (i % 5 != 0).then_some(i % 2 == 0)),
            )),
        ];
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
            Field::new("s", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("e", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("f", DataType::Boolean, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), cols).unwrap()
    }

    /// Every comparison operator, columns against columns and literals,
    /// either way round, in conjunctions and `BETWEEN`, decides each row as
    /// DataFusion's evaluation does.
    #[test]
    fn byte_comparisons_match_evaluation() {
        let batch = batch();
        let schema = DFSchema::try_from(batch.schema().as_ref().clone()).unwrap();
        let codec = RowCodec::new(batch.schema()).unwrap();
        let rows = codec.encode(batch.columns(), batch.num_rows()).unwrap();
        let ops = [
            Operator::Eq,
            Operator::NotEq,
            Operator::Lt,
            Operator::LtEq,
            Operator::Gt,
            Operator::GtEq,
        ];
        let ts = |v: i64| lit(ScalarValue::TimestampMillisecond(Some(v), None));
        let mut filters: Vec<Expr> = Vec::new();
        for op in ops {
            filters.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(col("a")),
                op,
                Box::new(col("b")),
            )));
            filters.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(col("a")),
                op,
                Box::new(lit(-3i64)),
            )));
            filters.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(lit(4i64)),
                op,
                Box::new(col("b")),
            )));
            filters.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(col("e")),
                op,
                Box::new(ts(0)),
            )));
            filters.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(col("f")),
                op,
                Box::new(lit(true)),
            )));
        }
        filters.push(col("s").between(col("e"), ts(9)));
        filters.push(col("a").gt_eq(col("b")).and(col("s").lt_eq(col("e"))));
        let slices: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
        for f in &filters {
            let byte = ByteFilter::new(std::slice::from_ref(f), &schema).expect("a byte filter");
            let eval = RowEval::new(&schema, std::slice::from_ref(f), &[]).unwrap();
            let (full, partial, failed) = eval.eval_rows(&slices);
            assert!(partial.is_empty() && failed.is_empty());
            let kept = full.expect("evaluated").kept;
            let mut ends = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let want = kept.contains(&i);
                assert_eq!(byte.passes(row, &mut ends), Some(want), "{f} at row {i}");
            }
            assert!(kept.len() < rows.len(), "{f} keeps every row");
        }
    }

    #[test]
    fn other_filters_are_left_to_evaluation() {
        let batch = batch();
        let schema = DFSchema::try_from(batch.schema().as_ref().clone()).unwrap();
        for f in [
            col("a").gt(col("s")),                            // different types
            col("a").gt(lit(3i32)),                           // a literal of another type
            col("a").eq(lit(ScalarValue::Int64(None))),       // NULL
            (col("a") + lit(1i64)).gt(col("b")),              // not a column
            col("a").gt(col("b")).or(col("a").lt(lit(0i64))), // a disjunction
            col("a").not_between(col("b"), lit(3i64)),
        ] {
            assert!(
                ByteFilter::new(std::slice::from_ref(&f), &schema).is_none(),
                "{f}"
            );
        }
        assert!(ByteFilter::new(&[], &schema).is_none());
    }
}
