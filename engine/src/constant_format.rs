//! `to_char(timestamp, 'constant format')`, with the format parsed once.
//!
//! DataFusion formats each timestamp through Arrow's display code, which
//! hands the format string to chrono, which parses it again for every
//! value: in Nexmark q17 (`to_char(date_time, '%Y-%m-%d')` per bid) that
//! was among the top costs. [`rewrite`] wraps each `to_char` of a
//! timestamp without time zone by a literal format in [`ConstantFormat`],
//! which parses the format once and, where it names only parts of the date,
//! formats each day once for the run of values on it. A format chrono
//! cannot parse, a time zone or a value out of range takes DataFusion's
//! own path, so every answer and error is DataFusion's.

use std::fmt::{self, Write};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{
    ArrowTimestampType, DataType, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::record_batch::RecordBatch;
use arrow::temporal_conversions::as_datetime;
use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

/// Wrap every `to_char(timestamp, 'literal')` in `expr`, whose input is
/// `schema`, in a [`ConstantFormat`].
pub fn rewrite(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let Some(call) = e.downcast_ref::<ScalarFunctionExpr>() else {
            return Ok(Transformed::no(e));
        };
        let [value, format] = call.args() else {
            return Ok(Transformed::no(e));
        };
        if !matches!(call.fun().name(), "to_char" | "date_format") {
            return Ok(Transformed::no(e));
        }
        let DataType::Timestamp(unit, None) = value.data_type(schema)? else {
            return Ok(Transformed::no(e));
        };
        let Some(format) = format.downcast_ref::<Literal>().and_then(|l| match l.value() {
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
                Some(s.to_string())
            }
            _ => None,
        }) else {
            return Ok(Transformed::no(e));
        };
        let Ok(items) = StrftimeItems::new(&format).parse_to_owned() else {
            return Ok(Transformed::no(e));
        };
        if items.contains(&Item::Error) {
            return Ok(Transformed::no(e));
        }
        let date_only = items.iter().all(names_the_date_only);
        Ok(Transformed::yes(Arc::new(ConstantFormat {
            general: e,
            items,
            unit,
            date_only,
        })))
    })
    .map(|t| t.data)
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

/// `to_char` of a timestamp column by a format parsed once; `general`
/// (the call it replaces) where this cannot answer.
#[derive(Debug)]
pub struct ConstantFormat {
    general: Arc<dyn PhysicalExpr>,
    items: Vec<Item<'static>>,
    unit: TimeUnit,
    /// Every item prints from the date alone.
    date_only: bool,
}

impl ConstantFormat {
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

impl PartialEq for ConstantFormat {
    fn eq(&self, other: &Self) -> bool {
        self.general.as_ref() == other.general.as_ref()
    }
}

impl Eq for ConstantFormat {}

impl Hash for ConstantFormat {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.general.as_ref().hash(state)
    }
}

impl fmt::Display for ConstantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.general, f)
    }
}

impl PhysicalExpr for ConstantFormat {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.general.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.general.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let value = self.general.children()[0].evaluate(batch)?;
        match self.format(&value) {
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
        // New children may be a new format: the plain call again.
        Arc::clone(&self.general).with_new_children(children)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.general.fmt_sql(f)
    }
}
