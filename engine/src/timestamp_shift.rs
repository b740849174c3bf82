//! `timestamp ± interval` for intervals of a fixed length.
//!
//! Arrow adds a month-day-nanosecond interval to a timestamp one value at a
//! time through calendar arithmetic (to a date and time, add the months,
//! the days, the nanoseconds, and back), which is right for `INTERVAL '1
//! month'` but costs Nexmark's windows (`date_time - INTERVAL '10
//! seconds'`, a window start minus a slide) several percent of their CPU.
//! When no interval in a batch has months, and none has days unless the
//! timestamps have no time zone (so a day is always 86,400 s), the sum is
//! integer arithmetic on the timestamps' ticks. [`rewrite`] wraps each such
//! DataFusion `BinaryExpr` in [`TimestampShift`], which takes that path and
//! otherwise (months, a time zone's days, a remainder below the timestamp's
//! unit, an overflow) evaluates the original expression, so every answer
//! and error is DataFusion's.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::datatypes::{
    ArrowTimestampType, DataType, IntervalMonthDayNano, IntervalUnit, Schema, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::BinaryExpr;

/// Wrap every `timestamp ± interval` (and `interval + timestamp`) in
/// `expr`, whose input is `schema`, in a [`TimestampShift`].
pub fn rewrite(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let Some(binary) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(e));
        };
        let (l, r) = (
            binary.left().data_type(schema)?,
            binary.right().data_type(schema)?,
        );
        let month_day_nano = DataType::Interval(IntervalUnit::MonthDayNano);
        let shape = match (binary.op(), &l, &r) {
            (Operator::Plus, DataType::Timestamp(unit, tz), iv) if *iv == month_day_nano => {
                Some((false, false, unit, tz.is_some()))
            }
            (Operator::Minus, DataType::Timestamp(unit, tz), iv) if *iv == month_day_nano => {
                Some((false, true, unit, tz.is_some()))
            }
            (Operator::Plus, iv, DataType::Timestamp(unit, tz)) if *iv == month_day_nano => {
                Some((true, false, unit, tz.is_some()))
            }
            _ => None,
        };
        let Some((interval_left, negate, unit, zoned)) = shape else {
            return Ok(Transformed::no(e));
        };
        Ok(Transformed::yes(Arc::new(TimestampShift {
            general: e,
            interval_left,
            negate,
            unit: *unit,
            zoned,
        })))
    })
    .map(|t| t.data)
}

/// `timestamp ± interval`, by integer arithmetic where the intervals are
/// fixed lengths; `general` (the `BinaryExpr` it replaces) otherwise.
#[derive(Debug)]
pub struct TimestampShift {
    general: Arc<dyn PhysicalExpr>,
    /// `interval + timestamp`.
    interval_left: bool,
    /// `timestamp - interval`.
    negate: bool,
    unit: TimeUnit,
    /// The timestamps carry a time zone: a day is not a fixed length.
    zoned: bool,
}

impl TimestampShift {
    fn binary(&self) -> &BinaryExpr {
        self.general.downcast_ref().expect("wraps a BinaryExpr")
    }

    /// The interval's length in ticks of the timestamp's unit, or `None`
    /// where it is not a fixed whole number of them.
    fn ticks(&self, iv: IntervalMonthDayNano) -> Option<i64> {
        if iv.months != 0 || (iv.days != 0 && self.zoned) {
            return None;
        }
        let nanos = (iv.days as i64)
            .checked_mul(86_400_000_000_000)?
            .checked_add(iv.nanoseconds)?;
        let per_tick = match self.unit {
            TimeUnit::Second => 1_000_000_000,
            TimeUnit::Millisecond => 1_000_000,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1,
        };
        if nanos % per_tick != 0 {
            return None;
        }
        let ticks = nanos / per_tick;
        if self.negate {
            ticks.checked_neg()
        } else {
            Some(ticks)
        }
    }

    /// The fast path over evaluated operands; `None` to fall back.
    fn shift(&self, ts: &ColumnarValue, iv: &ColumnarValue, rows: usize) -> Option<ColumnarValue> {
        match self.unit {
            TimeUnit::Second => self.shift_typed::<TimestampSecondType>(ts, iv, rows),
            TimeUnit::Millisecond => self.shift_typed::<TimestampMillisecondType>(ts, iv, rows),
            TimeUnit::Microsecond => self.shift_typed::<TimestampMicrosecondType>(ts, iv, rows),
            TimeUnit::Nanosecond => self.shift_typed::<TimestampNanosecondType>(ts, iv, rows),
        }
    }

    fn shift_typed<T: ArrowTimestampType>(
        &self,
        ts: &ColumnarValue,
        iv: &ColumnarValue,
        rows: usize,
    ) -> Option<ColumnarValue> {
        let ts_array = match ts {
            // A constant timestamp: the general path is one value's work.
            ColumnarValue::Scalar(_) => return None,
            ColumnarValue::Array(a) => a.as_primitive::<T>(),
        };
        let out: PrimitiveArray<T> = match iv {
            ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(v))) => {
                let ticks = self.ticks(*v)?;
                ts_array.try_unary(|t| t.checked_add(ticks).ok_or(())).ok()?
            }
            ColumnarValue::Scalar(_) => return None,
            ColumnarValue::Array(a) => {
                let intervals = a.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>();
                if intervals.len() != rows {
                    return None;
                }
                let overflow = || ArrowError::ComputeError("not a fixed shift".into());
                arrow::compute::try_binary(ts_array, intervals, |t, v| {
                    let ticks = self.ticks(v).ok_or_else(overflow)?;
                    t.checked_add(ticks).ok_or_else(overflow)
                })
                .ok()?
            }
        };
        let out: ArrayRef = Arc::new(out.with_timezone_opt(timezone(ts_array)));
        Some(ColumnarValue::Array(out))
    }
}

fn timezone<T: ArrowTimestampType>(a: &PrimitiveArray<T>) -> Option<Arc<str>> {
    match a.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

// The rest is decided by `general`.
impl PartialEq for TimestampShift {
    fn eq(&self, other: &Self) -> bool {
        self.general.as_ref() == other.general.as_ref()
    }
}

impl Eq for TimestampShift {}

impl Hash for TimestampShift {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.general.as_ref().hash(state)
    }
}

impl fmt::Display for TimestampShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.general, f)
    }
}

impl PhysicalExpr for TimestampShift {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.general.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.general.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let binary = self.binary();
        let (l, r) = (binary.left().evaluate(batch)?, binary.right().evaluate(batch)?);
        let (ts, iv) = if self.interval_left { (&r, &l) } else { (&l, &r) };
        match self.shift(ts, iv, batch.num_rows()) {
            Some(out) => Ok(out),
            None => self.general.evaluate(batch),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.general.children()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(TimestampShift {
            general: Arc::clone(&self.general).with_new_children(children)?,
            interval_left: self.interval_left,
            negate: self.negate,
            unit: self.unit,
            zoned: self.zoned,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.general.fmt_sql(f)
    }
}
