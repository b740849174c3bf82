//! `to_char(timestamp, 'constant format')`, with the format parsed once.
//!
//! DataFusion formats each timestamp through Arrow's display code, which
//! hands the format string to chrono, which parses it again for every
//! value: in Nexmark q17 (`to_char(date_time, '%Y-%m-%d')` per bid) that
//! was among the top costs. [`recognize`] gives each `to_char` of a
//! timestamp without time zone by a literal format a [`Format`] kernel,
//! which parses the format once and, where it names only parts of the date,
//! formats each day once for the run of values on it. A format chrono
//! cannot parse, a time zone or a value out of range is left to DataFusion
//! ([`crate::fast_path`]).

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{
    ArrowTimestampType, DataType, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::temporal_conversions::as_datetime;
use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::fast_path::{FastPath, Kernel};

/// A [`Format`] kernel for `e` where it is `to_char(timestamp, 'literal')`
/// over `schema`.
pub fn recognize(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(call) = e.downcast_ref::<ScalarFunctionExpr>() else {
        return Ok(None);
    };
    let [value, format] = call.args() else {
        return Ok(None);
    };
    if !matches!(call.fun().name(), "to_char" | "date_format") {
        return Ok(None);
    }
    let DataType::Timestamp(unit, None) = value.data_type(schema)? else {
        return Ok(None);
    };
    let Some(format) = format.downcast_ref::<Literal>().and_then(|l| match l.value() {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
            Some(s.to_string())
        }
        _ => None,
    }) else {
        return Ok(None);
    };
    let Ok(items) = StrftimeItems::new(&format).parse_to_owned() else {
        return Ok(None);
    };
    if items.contains(&Item::Error) {
        return Ok(None);
    }
    let date_only = items.iter().all(names_the_date_only);
    Ok(Some(FastPath::wrap(
        Arc::clone(e),
        Format {
            items,
            unit,
            date_only,
        },
    )))
}

/// Whether a format item prints only from the date (so one day's values
/// all print alike).
fn names_the_date_only(item: &Item<'_>) -> bool {
    match item {
        Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_) => true,
        Item::Numeric(n, _) => matches!(
            n,
            Numeric::Year
                | Numeric::YearDiv100
                | Numeric::YearMod100
                | Numeric::IsoYear
                | Numeric::IsoYearDiv100
                | Numeric::IsoYearMod100
                | Numeric::Quarter
                | Numeric::Month
                | Numeric::Day
                | Numeric::WeekFromSun
                | Numeric::WeekFromMon
                | Numeric::IsoWeek
                | Numeric::NumDaysFromSun
                | Numeric::WeekdayFromMon
                | Numeric::Ordinal
        ),
        Item::Fixed(f) => matches!(
            f,
            Fixed::ShortMonthName | Fixed::LongMonthName | Fixed::ShortWeekdayName | Fixed::LongWeekdayName
        ),
        Item::Error => false,
    }
}

/// `to_char` of a timestamp column by a format parsed once.
#[derive(Debug)]
pub struct Format {
    items: Vec<Item<'static>>,
    unit: TimeUnit,
    /// Every item prints from the date alone.
    date_only: bool,
}

impl Format {
    fn format(&self, value: &ColumnarValue) -> Option<ColumnarValue> {
        let ColumnarValue::Array(array) = value else {
            return None;
        };
        match self.unit {
            TimeUnit::Second => self.format_typed::<TimestampSecondType>(array, 86_400),
            TimeUnit::Millisecond => self.format_typed::<TimestampMillisecondType>(array, 86_400_000),
            TimeUnit::Microsecond => self.format_typed::<TimestampMicrosecondType>(array, 86_400_000_000),
            TimeUnit::Nanosecond => self.format_typed::<TimestampNanosecondType>(array, 86_400_000_000_000),
        }
    }

    fn format_typed<T: ArrowTimestampType>(
        &self,
        array: &ArrayRef,
        ticks_per_day: i64,
    ) -> Option<ColumnarValue> {
        let values = array.as_primitive::<T>();
        let mut out = StringBuilder::with_capacity(values.len(), values.len() * 12);
        // The day last formatted, and its text.
        let mut day: Option<i64> = None;
        let mut text = String::new();
        for v in values.iter() {
            let Some(v) = v else {
                out.append_null();
                continue;
            };
            let this_day = v.div_euclid(ticks_per_day);
            if !self.date_only || day != Some(this_day) {
                let naive = as_datetime::<T>(v)?;
                text.clear();
                write!(text, "{}", naive.format_with_items(self.items.iter())).ok()?;
                day = Some(this_day);
            }
            out.append_value(&text);
        }
        Some(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

impl Kernel for Format {
    fn evaluate(&self, children: &[ColumnarValue], _rows: usize) -> Option<ColumnarValue> {
        self.format(children.first()?)
    }
}
