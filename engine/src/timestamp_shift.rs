//! `timestamp ± interval` for intervals of a fixed length.
//!
//! Arrow adds a month-day-nanosecond interval to a timestamp one value at a
//! time through calendar arithmetic (to a date and time, add the months,
//! the days, the nanoseconds, and back), which is right for `INTERVAL '1
//! month'` but costs Nexmark's windows (`date_time - INTERVAL '10
//! seconds'`, a window start minus a slide) several percent of their CPU.
//! When no interval in a batch has months, and none has days unless the
//! timestamps have no time zone (so a day is always 86,400 s), the sum is
//! integer arithmetic on the timestamps' ticks. [`recognize`] gives each
//! such DataFusion `BinaryExpr` a [`Shift`] kernel, which declines
//! (months, a time zone's days, a remainder below the timestamp's unit, an
//! overflow) back to DataFusion ([`crate::fast_path`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::datatypes::{
    ArrowTimestampType, DataType, IntervalMonthDayNano, IntervalUnit, Schema, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};

use crate::fast_path::{FastPath, Kernel};

/// A [`Shift`] kernel for `e` where it is `timestamp ± interval` (or
/// `interval + timestamp`) over `schema`.
pub fn recognize(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(binary) = e.downcast_ref::<BinaryExpr>() else {
        return Ok(None);
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
        return Ok(None);
    };
    let shift = Shift {
        interval_left,
        negate,
        unit: *unit,
        zoned,
    };
    // A literal interval that is not a fixed length (`INTERVAL '1 month'`)
    // would decline on every batch: leave it to DataFusion outright.
    let interval = if interval_left {
        binary.left()
    } else {
        binary.right()
    };
    if let Some(ScalarValue::IntervalMonthDayNano(Some(v))) =
        interval.downcast_ref::<Literal>().map(|l| l.value())
        && shift.ticks(*v).is_none()
    {
        return Ok(None);
    }
    Ok(Some(FastPath::wrap(Arc::clone(e), shift)))
}

/// `timestamp ± interval` by integer arithmetic, where the intervals are
/// fixed lengths.
#[derive(Debug)]
pub struct Shift {
    /// `interval + timestamp`.
    interval_left: bool,
    /// `timestamp - interval`.
    negate: bool,
    unit: TimeUnit,
    /// The timestamps carry a time zone: a day is not a fixed length.
    zoned: bool,
}

impl Shift {
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

impl Kernel for Shift {
    fn evaluate(&self, children: &[ColumnarValue], rows: usize) -> Option<ColumnarValue> {
        let [l, r] = children else { return None };
        let (ts, iv) = if self.interval_left { (r, l) } else { (l, r) };
        self.shift(ts, iv, rows)
    }
}
