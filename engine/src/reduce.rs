//! Aggregation state.
//!
//! Accumulable aggregates (`count`, `sum`, `avg`) live in the difference of
//! a collection: each input row contributes an [`Accums`] scaled by its
//! multiplicity, differential adds them up per group, and a change costs
//! O(1) whatever the group's size. `min`/`max` re-read their group
//! ([`fold_group`]). Results are finalized into the exact types DataFusion
//! gives the same aggregates.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use differential_dataflow::difference::{IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};
use weir_sql::{AggregateExpr, AggregateFunc};

use crate::Diff;

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
/// accumulable aggregate.
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
        // Float sums can drift to tiny non-zero values when a group empties;
        // a group with no rows contributes nothing.
        if self.rows == 0 {
            for a in &mut self.accs {
                if let Acc::Float { sum, count } = a
                    && *count == 0
                {
                    *sum = 0.0;
                }
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
}

impl Accumulator {
    pub fn new(aggs: &[AggregateExpr]) -> Self {
        Accumulator { aggs: aggs.to_vec() }
    }

    /// The state of an empty group.
    pub fn zero(&self) -> Accums {
        let accs = self
            .aggs
            .iter()
            .filter(|a| a.func.is_accumulable())
            .map(|a| match a.func {
                AggregateFunc::CountStar | AggregateFunc::Count => Acc::Count(0),
                _ => zero_acc(&a.input_type),
            })
            .collect();
        Accums { rows: 0, accs }
    }

    /// The contribution of row `i` of `args` (one array per aggregate; for
    /// `count(*)` any array), scaled by `diff`.
    pub fn contribution(&self, args: &[ArrayRef], i: usize, diff: Diff) -> Result<Accums, String> {
        let d = diff as i64;
        let mut accs = Vec::with_capacity(self.aggs.len());
        for (agg, arr) in self.aggs.iter().zip(args) {
            if !agg.func.is_accumulable() {
                continue;
            }
            let valid = agg.func == AggregateFunc::CountStar || arr.is_valid(i);
            accs.push(match agg.func {
                AggregateFunc::CountStar | AggregateFunc::Count => Acc::Count(if valid { d } else { 0 }),
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

/// Fold a whole group (for reduces with `min`/`max`): the accumulable state
/// and the min/max values, from `args` columns with per-row counts.
pub fn fold_group(
    aggs: &[AggregateExpr],
    args: &RecordBatch,
    counts: &[Diff],
) -> Result<(Accums, Vec<ScalarValue>), String> {
    let acc = Accumulator::new(aggs);
    let mut total = Accums::default();
    for (i, c) in counts.iter().enumerate() {
        total.plus_equals(&acc.contribution(args.columns(), i, *c)?);
    }
    let mut extremes = Vec::new();
    for (j, agg) in aggs.iter().enumerate() {
        let col = args.column(j);
        if !matches!(agg.func, AggregateFunc::Min | AggregateFunc::Max) {
            continue;
        }
        // Rows arrive in any order; scan for the extreme non-null value.
        let mut best: Option<ScalarValue> = None;
        for i in 0..col.len() {
            if col.is_null(i) {
                continue;
            }
            let s = ScalarValue::try_from_array(col, i).map_err(|e| e.to_string())?;
            best = Some(match best {
                None => s,
                Some(b) => {
                    let keep_new = match s.partial_cmp(&b) {
                        Some(Ordering::Less) => agg.func == AggregateFunc::Min,
                        Some(Ordering::Greater) => agg.func == AggregateFunc::Max,
                        _ => false,
                    };
                    if keep_new { s } else { b }
                }
            });
        }
        extremes.push(best.unwrap_or(ScalarValue::try_from(&agg.output_type).map_err(|e| e.to_string())?));
    }
    Ok((total, extremes))
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
            AggregateFunc::Min | AggregateFunc::Max => {
                let v = extremes.next().ok_or("missing min/max state")?;
                v.to_array().map_err(|e| e.to_string())?
            }
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
        (AggregateFunc::CountStar | AggregateFunc::Count, Acc::Count(c)) => {
            Arc::new(Int64Array::from(vec![*c]))
        }
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
