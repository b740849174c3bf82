//! Aggregation state.
//!
//! Accumulable aggregates (`count`, `sum`, `avg`) live in the difference of
//! a collection: each input row contributes an [`Accums`] scaled by its
//! multiplicity, differential adds them up per group, and a change costs
//! O(1) whatever the group's size. `min`/`max` re-read their group
//! ([`fold_group`]). Results are finalized into the exact types DataFusion
//! gives the same aggregates.

use std::cmp::Ordering;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{SortOptions, cast, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, lit};
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use differential_dataflow::difference::{IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};
use weir_sql::{AggregateExpr, AggregateFunc};

use crate::eval::clean;
use crate::row::{Row, RowCodec};
use crate::{Diff, EngineError};

/// One accumulable aggregate's running state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    /// Counts (of rows or non-null values).
    Count(i64),
    /// Exact sums of integers or unscaled decimals, with the non-null count.
    Int { sum: i128, count: i64 },
    /// Floating-point sums, with the non-null count.
    Float { sum: f64, count: i64 },
}

impl Eq for Acc {}

impl PartialOrd for Acc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Acc {
    fn cmp(&self, other: &Self) -> Ordering {
        let key = |a: &Acc| match *a {
            Acc::Count(c) => (0, c as i128, 0u64, 0),
            Acc::Int { sum, count } => (1, sum, 0, count),
            Acc::Float { sum, count } => (2, 0, sum.to_bits(), count),
        };
        key(self).cmp(&key(other))
    }
}

/// The accumulated state of a group: its row count and one [`Acc`] per
/// accumulable aggregate. (A vector, not inline: held inline, two
/// accumulators made every update of a count-only reduction, which keeps
/// none, several times wider, and moving updates cost more than the
/// allocation saved.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Accums {
    pub rows: i64,
    pub accs: Vec<Acc>,
}

impl IsZero for Accums {
    fn is_zero(&self) -> bool {
        self.rows == 0
            && self.accs.iter().all(|a| match *a {
                Acc::Count(c) => c == 0,
                Acc::Int { sum, count } => sum == 0 && count == 0,
                Acc::Float { sum, count } => sum == 0.0 && count == 0,
            })
    }
}

impl Semigroup for Accums {
    fn plus_equals(&mut self, rhs: &Self) {
        self.rows += rhs.rows;
        if self.accs.is_empty() {
            self.accs = rhs.accs.clone();
            return;
        }
        for (a, b) in self.accs.iter_mut().zip(&rhs.accs) {
            match (a, b) {
                (Acc::Count(x), Acc::Count(y)) => *x += y,
                (Acc::Int { sum, count }, Acc::Int { sum: s, count: c }) => {
                    *sum += s;
                    *count += c;
                }
                (Acc::Float { sum, count }, Acc::Float { sum: s, count: c }) => {
                    *sum += s;
                    *count += c;
                }
                _ => unreachable!("aggregate states of one reduce have one shape"),
            }
        }
    }
}

impl Monoid for Accums {
    fn zero() -> Self {
        Accums::default()
    }
}

/// Computes each row's contribution to the accumulable aggregates.
pub struct Accumulator {
    aggs: Vec<AggregateExpr>,
    /// How many of them keep an [`Acc`].
    kept: usize,
}

impl Accumulator {
    pub fn new(aggs: &[AggregateExpr]) -> Self {
        Accumulator {
            aggs: aggs.to_vec(),
            kept: aggs.iter().filter(|a| keeps_acc(a.func)).count(),
        }
    }

    /// The state of an empty group.
    pub fn zero(&self) -> Accums {
        let accs = self
            .aggs
            .iter()
            .filter(|a| keeps_acc(a.func))
            .map(|a| match a.func {
                AggregateFunc::Count => Acc::Count(0),
                _ => zero_acc(&a.input_type),
            })
            .collect();
        Accums { rows: 0, accs }
    }

    /// The contribution of row `i` of `args` (one array per aggregate; for
    /// `count(*)` any array), scaled by `diff`.
    pub fn contribution(&self, args: &[ArrayRef], i: usize, diff: Diff) -> Result<Accums, String> {
        let d = diff as i64;
        let mut accs = Vec::with_capacity(self.kept);
        for (agg, arr) in self.aggs.iter().zip(args) {
            if !keeps_acc(agg.func) {
                continue;
            }
            // A distinct count's values arrive counted once each, from
            // [`crate::distinct_count`], not from every row.
            let valid = arr.is_valid(i) && !agg.distinct;
            accs.push(match agg.func {
                AggregateFunc::Count => Acc::Count(if valid { d } else { 0 }),
                _ => {
                    if !valid {
                        zero_acc(&agg.input_type)
                    } else {
                        value_acc(arr, i, d)?
                    }
                }
            });
        }
        Ok(Accums { rows: d, accs })
    }

    /// The contribution of one distinct value of aggregate `agg` (a
    /// distinct count) appearing (`diff` 1) or vanishing (-1).
    pub fn distinct_unit(&self, agg: usize, diff: Diff) -> Accums {
        self.distinct_units([(agg, diff)])
    }

    /// [`Accumulator::distinct_unit`] for several distinct counts at once.
    pub fn distinct_units(&self, changes: impl IntoIterator<Item = (usize, Diff)>) -> Accums {
        let mut unit = self.zero();
        for (agg, diff) in changes {
            if let Acc::Count(c) = &mut unit.accs[self.slot(agg)] {
                *c += diff as i64;
            }
        }
        unit
    }

    /// Where aggregate `agg`'s [`Acc`] sits in a state.
    fn slot(&self, agg: usize) -> usize {
        self.aggs[..agg].iter().filter(|a| keeps_acc(a.func)).count()
    }
}

/// Whether `func` keeps an [`Acc`] of its own. `count(*)` is the group's
/// row count, which every state keeps anyway: a count-only state then
/// holds no vector, and a row's contribution allocates nothing.
fn keeps_acc(func: AggregateFunc) -> bool {
    func.is_accumulable() && func != AggregateFunc::CountStar
}

fn zero_acc(t: &DataType) -> Acc {
    if t.is_floating() {
        Acc::Float { sum: 0.0, count: 0 }
    } else {
        Acc::Int { sum: 0, count: 0 }
    }
}

fn value_acc(arr: &ArrayRef, i: usize, d: i64) -> Result<Acc, String> {
    use arrow::datatypes::*;
    let int = |v: i128| Acc::Int {
        sum: v * d as i128,
        count: d,
    };
    Ok(match arr.data_type() {
        DataType::Int8 => int(arr.as_primitive::<Int8Type>().value(i) as i128),
        DataType::Int16 => int(arr.as_primitive::<Int16Type>().value(i) as i128),
        DataType::Int32 => int(arr.as_primitive::<Int32Type>().value(i) as i128),
        DataType::Int64 => int(arr.as_primitive::<Int64Type>().value(i) as i128),
        DataType::UInt8 => int(arr.as_primitive::<UInt8Type>().value(i) as i128),
        DataType::UInt16 => int(arr.as_primitive::<UInt16Type>().value(i) as i128),
        DataType::UInt32 => int(arr.as_primitive::<UInt32Type>().value(i) as i128),
        DataType::UInt64 => int(arr.as_primitive::<UInt64Type>().value(i) as i128),
        DataType::Decimal128(..) => int(arr.as_primitive::<Decimal128Type>().value(i)),
        DataType::Float32 => Acc::Float {
            sum: arr.as_primitive::<Float32Type>().value(i) as f64 * d as f64,
            count: d,
        },
        DataType::Float64 => Acc::Float {
            sum: arr.as_primitive::<Float64Type>().value(i) * d as f64,
            count: d,
        },
        DataType::Null => Acc::Int { sum: 0, count: 0 },
        other => return Err(format!("cannot sum values of type {other}")),
    })
}

/// Where one aggregate's inputs sit in an argument row.
#[derive(Debug, Clone)]
struct AggColumns {
    /// Each argument: a column of the argument row, or a literal (some
    /// accumulators, like `string_agg`'s delimiter, insist on literals).
    args: Vec<Result<usize, ScalarValue>>,
    filter: Option<usize>,
    order: Range<usize>,
}

impl AggColumns {
    /// The first argument that is a column, as an array of `args`' rows
    /// (all NULL when every argument is a literal).
    fn first_column(&self, args: &RecordBatch) -> ArrayRef {
        match self.args.iter().find_map(|a| a.as_ref().ok().copied()) {
            Some(i) => args.column(i).clone(),
            None => new_null_array(&DataType::Null, args.num_rows()),
        }
    }
}

/// Folds whole groups, for reduces with non-accumulable aggregates
/// (`min`/`max`, and general aggregates run through DataFusion's own
/// accumulators).
pub struct GroupFolder {
    aggs: Vec<AggregateExpr>,
    layout: Vec<AggColumns>,
    generals: Vec<Option<AggregateFunctionExpr>>,
    /// The schema of the argument rows the group's values are encoded as.
    pub arg_schema: SchemaRef,
}

impl GroupFolder {
    /// The expressions (bound to `input`) whose values make up one argument
    /// row, and the folder that reads such rows.
    pub fn new(aggs: &[AggregateExpr], input: &DFSchema) -> Result<(Vec<Expr>, Self), EngineError> {
        let mut exprs: Vec<Expr> = Vec::new();
        let mut layout = Vec::new();
        for agg in aggs {
            let start = exprs.len();
            match &agg.general {
                None => {
                    exprs.push(agg.argument().unwrap_or_else(|| lit(true)));
                    layout.push(AggColumns {
                        args: vec![Ok(start)],
                        filter: None,
                        order: 0..0,
                    });
                }
                Some(g) => {
                    let args = g
                        .args
                        .iter()
                        .map(|a| match a {
                            Expr::Literal(v, _) => Err(v.clone()),
                            a => {
                                exprs.push(a.clone());
                                Ok(exprs.len() - 1)
                            }
                        })
                        .collect();
                    let filter = g.filter.as_ref().map(|f| {
                        exprs.push(f.clone());
                        exprs.len() - 1
                    });
                    let order_start = exprs.len();
                    exprs.extend(g.order_by.iter().map(|s| s.expr.clone()));
                    layout.push(AggColumns {
                        args,
                        filter,
                        order: order_start..exprs.len(),
                    });
                }
            }
        }
        let fields = crate::eval::expr_fields(&exprs, input, "a")?;
        let arg_schema: SchemaRef = Arc::new(Schema::new(fields));
        let column = |i: usize| -> Arc<dyn PhysicalExpr> { Arc::new(Column::new(&format!("a{i}"), i)) };
        let generals = aggs
            .iter()
            .zip(&layout)
            .map(|(agg, cols)| {
                let Some(g) = &agg.general else { return Ok(None) };
                let order = g
                    .order_by
                    .iter()
                    .zip(cols.order.clone())
                    .map(|(s, i)| PhysicalSortExpr {
                        expr: column(i),
                        options: SortOptions {
                            descending: !s.asc,
                            nulls_first: s.nulls_first,
                        },
                    })
                    .collect();
                let args = cols
                    .args
                    .iter()
                    .map(|a| match a {
                        Ok(i) => column(*i),
                        Err(v) => Arc::new(Literal::new(v.clone())) as Arc<dyn PhysicalExpr>,
                    })
                    .collect();
                AggregateExprBuilder::new(g.udaf.clone(), args)
                    .schema(arg_schema.clone())
                    .alias(g.udaf.name())
                    .with_distinct(g.distinct)
                    .with_ignore_nulls(g.ignore_nulls)
                    .order_by(order)
                    .build()
                    .map(Some)
                    .map_err(|e| EngineError::Expression(e.to_string()))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok((
            exprs,
            GroupFolder {
                aggs: aggs.to_vec(),
                layout,
                generals,
                arg_schema,
            },
        ))
    }

    /// A group's aggregate values from its argument rows with counts,
    /// encoded as one row by `codec`: fold, finalize, encode.
    pub fn values_row(&self, args: &RecordBatch, counts: &[Diff], codec: &RowCodec) -> Result<Row, String> {
        let (accums, extremes) = self.fold(args, counts)?;
        let columns = finalize(&self.aggs, &accums, &extremes)?;
        Ok(codec.encode(&columns, 1).map_err(|e| e.to_string())?.remove(0))
    }

    /// A group's accumulable state and, in order, the value of each
    /// non-accumulable aggregate, from its argument rows with counts.
    pub fn fold(&self, args: &RecordBatch, counts: &[Diff]) -> Result<(Accums, Vec<ScalarValue>), String> {
        let primary: Vec<ArrayRef> = self.layout.iter().map(|c| c.first_column(args)).collect();
        let acc = Accumulator::new(&self.aggs);
        let mut total = acc.zero();
        for (i, c) in counts.iter().enumerate() {
            total.plus_equals(&acc.contribution(&primary, i, *c)?);
        }
        for (j, _) in self.aggs.iter().enumerate().filter(|(_, a)| a.distinct) {
            let values = &primary[j];
            let mut seen = std::collections::HashSet::new();
            for (i, c) in counts.iter().enumerate() {
                if *c > 0 && values.is_valid(i) {
                    seen.insert(ScalarValue::try_from_array(values, i).map_err(|e| e.to_string())?);
                }
            }
            total.plus_equals(&acc.distinct_unit(j, seen.len() as Diff));
        }
        let mut values = Vec::new();
        let mut expanded: Option<RecordBatch> = None;
        for ((agg, cols), general) in self.aggs.iter().zip(&self.layout).zip(&self.generals) {
            match agg.func {
                AggregateFunc::Min | AggregateFunc::Max => {
                    values.push(extreme(agg, &cols.first_column(args))?);
                }
                AggregateFunc::General => {
                    let expr = general
                        .as_ref()
                        .ok_or("general aggregate without an accumulator")?;
                    // DataFusion's accumulators see one row per occurrence.
                    let rows = match &expanded {
                        Some(b) => b.clone(),
                        None => {
                            let idx: Vec<u32> = counts
                                .iter()
                                .enumerate()
                                .flat_map(|(i, c)| std::iter::repeat_n(i as u32, (*c).max(0) as usize))
                                .collect();
                            let b = take_record_batch(args, &UInt32Array::from(idx))
                                .map_err(|e| e.to_string())?;
                            expanded = Some(b.clone());
                            b
                        }
                    };
                    let rows = match cols.filter {
                        Some(f) => {
                            let mask = rows.column(f).as_boolean().clone();
                            let mask = arrow::array::BooleanArray::from(
                                (0..mask.len())
                                    .map(|i| mask.is_valid(i) && mask.value(i))
                                    .collect::<Vec<_>>(),
                            );
                            filter_record_batch(&rows, &mask).map_err(|e| e.to_string())?
                        }
                        None => rows,
                    };
                    let mut inputs: Vec<ArrayRef> = cols
                        .args
                        .iter()
                        .map(|a| match a {
                            Ok(i) => Ok(rows.column(*i).clone()),
                            Err(v) => v.to_array_of_size(rows.num_rows()).map_err(|e| e.to_string()),
                        })
                        .collect::<Result<_, String>>()?;
                    inputs.extend(cols.order.clone().map(|i| rows.column(i).clone()));
                    let mut accumulator = expr.create_accumulator().map_err(|e| clean(&e))?;
                    accumulator.update_batch(&inputs).map_err(|e| clean(&e))?;
                    values.push(accumulator.evaluate().map_err(|e| clean(&e))?);
                }
                _ => {}
            }
        }
        Ok((total, values))
    }
}

/// The smallest or largest non-NULL value of `col` (NULL if none).
fn extreme(agg: &AggregateExpr, col: &ArrayRef) -> Result<ScalarValue, String> {
    use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
    use datafusion::logical_expr::Accumulator;
    let e = |e: datafusion::error::DataFusionError| e.to_string();
    // DataFusion's own kernels, typed: a `ScalarValue` made of each row
    // first cost more than the rest of Nexmark q11's grouping.
    let mut acc: Box<dyn Accumulator> = match agg.func {
        AggregateFunc::Min => Box::new(MinAccumulator::try_new(col.data_type()).map_err(e)?),
        _ => Box::new(MaxAccumulator::try_new(col.data_type()).map_err(e)?),
    };
    acc.update_batch(std::slice::from_ref(col)).map_err(e)?;
    match acc.evaluate().map_err(e)? {
        v if v.is_null() => ScalarValue::try_from(&agg.output_type).map_err(|e| e.to_string()),
        v => Ok(v),
    }
}

/// Turn a group's state into one array per aggregate (length 1), of the
/// types DataFusion gives them. `extremes` holds min/max values in order.
pub fn finalize(
    aggs: &[AggregateExpr],
    accums: &Accums,
    extremes: &[ScalarValue],
) -> Result<Vec<ArrayRef>, String> {
    let mut out = Vec::with_capacity(aggs.len());
    let mut accs = accums.accs.iter();
    let mut extremes = extremes.iter();
    for agg in aggs {
        let array: ArrayRef = match agg.func {
            AggregateFunc::Min | AggregateFunc::Max | AggregateFunc::General => {
                let v = extremes.next().ok_or("missing aggregate value")?;
                v.to_array().map_err(|e| e.to_string())?
            }
            AggregateFunc::CountStar => Arc::new(arrow::array::Int64Array::from(vec![accums.rows])),
            _ => {
                let acc = accs.next().ok_or("missing aggregate state")?;
                accumulated(agg, acc)?
            }
        };
        let array = if array.data_type() == &agg.output_type {
            array
        } else {
            cast(&array, &agg.output_type).map_err(|e| e.to_string())?
        };
        out.push(array);
    }
    Ok(out)
}

fn accumulated(agg: &AggregateExpr, acc: &Acc) -> Result<ArrayRef, String> {
    use arrow::array::{Decimal128Array, Float64Array, Int64Array};
    let null = || new_null_array(&agg.output_type, 1);
    Ok(match (agg.func, acc) {
        (AggregateFunc::Count, Acc::Count(c)) => Arc::new(Int64Array::from(vec![*c])),
        (_, Acc::Int { count: 0, .. } | Acc::Float { count: 0, .. }) => null(),
        (AggregateFunc::Sum, Acc::Int { sum, .. }) => match &agg.output_type {
            DataType::Decimal128(p, s) => Arc::new(
                Decimal128Array::from(vec![*sum])
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            DataType::UInt64 => {
                let v = u64::try_from(*sum).map_err(|_| "bigint out of range".to_string())?;
                Arc::new(arrow::array::UInt64Array::from(vec![v]))
            }
            _ => {
                let v = i64::try_from(*sum).map_err(|_| "bigint out of range".to_string())?;
                Arc::new(Int64Array::from(vec![v]))
            }
        },
        (AggregateFunc::Sum, Acc::Float { sum, .. }) => Arc::new(Float64Array::from(vec![*sum])),
        (AggregateFunc::Avg, Acc::Float { sum, count }) => {
            Arc::new(Float64Array::from(vec![sum / *count as f64]))
        }
        (AggregateFunc::Avg, Acc::Int { sum, count }) => {
            match (&agg.input_type, &agg.output_type) {
                (DataType::Decimal128(_, in_scale), DataType::Decimal128(p, out_scale)) => {
                    // DataFusion: rescale the sum to the result scale, then divide
                    // (truncating) by the count.
                    let shift = 10i128.pow((*out_scale - *in_scale).max(0) as u32);
                    let v = sum
                        .checked_mul(shift)
                        .ok_or_else(|| "numeric field overflow".to_string())?
                        / *count as i128;
                    Arc::new(
                        Decimal128Array::from(vec![v])
                            .with_precision_and_scale(*p, *out_scale)
                            .map_err(|e| e.to_string())?,
                    )
                }
                _ => Arc::new(Float64Array::from(vec![*sum as f64 / *count as f64])),
            }
        }
        (func, acc) => return Err(format!("aggregate {func:?} cannot finalize {acc:?}")),
    })
}

/// The Arrow schema of a reduce's aggregate columns.
pub fn aggregate_schema(aggs: &[AggregateExpr]) -> Arc<Schema> {
    Arc::new(Schema::new(
        aggs.iter()
            .enumerate()
            .map(|(i, a)| Field::new(format!("agg{i}"), a.output_type.clone(), true))
            .collect::<Vec<_>>(),
    ))
}
