//! Values at the pgwire edge: Arrow types to PostgreSQL type OIDs, Arrow
//! cells to PostgreSQL's text and binary formats, and bound parameters back
//! into DataFusion scalars.

use std::error::Error;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::*;
use arrow::util::display::{ArrayFormatter, FormatOptions as ArrowFormat};
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use postgres_types::{IsNull, ToSql, to_sql_checked};

use crate::error::AdapterError;

/// The PostgreSQL type of an Arrow type.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            Type::BYTEA
        }
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Interval(_) | DataType::Duration(_) => Type::INTERVAL,
        _ => Type::TEXT,
    }
}

/// The field descriptions of a result.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

/// One cell, ready for either wire format.
#[derive(Debug)]
pub enum Cell {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Numeric {
        unscaled: i128,
        scale: i8,
    },
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01.
    Timestamp(i64),
    TimestampTz(i64),
    Time(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
}

const PG_EPOCH_DAYS: i32 = 10_957; // 2000-01-01 - 1970-01-01
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * 86_400_000_000;

/// Read row `i` of `array` as a cell. `fallback` formats types without a
/// dedicated encoding.
pub fn cell(array: &ArrayRef, i: usize, fallback: &ArrayFormatter<'_>) -> Cell {
    if array.is_null(i) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Boolean => Cell::Bool(array.as_boolean().value(i)),
        DataType::Int8 => Cell::I16(array.as_primitive::<Int8Type>().value(i) as i16),
        DataType::Int16 => Cell::I16(array.as_primitive::<Int16Type>().value(i)),
        DataType::UInt8 => Cell::I16(array.as_primitive::<UInt8Type>().value(i) as i16),
        DataType::Int32 => Cell::I32(array.as_primitive::<Int32Type>().value(i)),
        DataType::UInt16 => Cell::I32(array.as_primitive::<UInt16Type>().value(i) as i32),
        DataType::Int64 => Cell::I64(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt32 => Cell::I64(array.as_primitive::<UInt32Type>().value(i) as i64),
        DataType::UInt64 => Cell::Numeric {
            unscaled: array.as_primitive::<UInt64Type>().value(i) as i128,
            scale: 0,
        },
        DataType::Float32 => Cell::F32(array.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => Cell::F64(array.as_primitive::<Float64Type>().value(i)),
        DataType::Decimal128(_, s) => Cell::Numeric {
            unscaled: array.as_primitive::<Decimal128Type>().value(i),
            scale: *s,
        },
        DataType::Utf8 => Cell::Text(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Cell::Text(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Cell::Text(array.as_string_view().value(i).to_string()),
        DataType::Binary => Cell::Bytes(array.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Cell::Bytes(array.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Cell::Bytes(array.as_binary_view().value(i).to_vec()),
        DataType::Date32 => Cell::Date(array.as_primitive::<Date32Type>().value(i)),
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(i) * 1_000_000,
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i) * 1_000,
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i),
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .value(i)
                    .div_euclid(1_000),
            };
            if tz.is_some() {
                Cell::TimestampTz(v)
            } else {
                Cell::Timestamp(v)
            }
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            Cell::Time(array.as_primitive::<Time64MicrosecondType>().value(i))
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            Cell::Time(array.as_primitive::<Time64NanosecondType>().value(i) / 1000)
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(i);
            Cell::Interval {
                months: v.months,
                days: v.days,
                micros: v.nanoseconds / 1000,
            }
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = array.as_primitive::<IntervalDayTimeType>().value(i);
            Cell::Interval {
                months: 0,
                days: v.days,
                micros: v.milliseconds as i64 * 1000,
            }
        }
        DataType::Interval(IntervalUnit::YearMonth) => Cell::Interval {
            months: array.as_primitive::<IntervalYearMonthType>().value(i),
            days: 0,
            micros: 0,
        },
        // timestamp - timestamp: PostgreSQL's interval, whole days split
        // off the time as its subtraction does.
        DataType::Duration(unit) => {
            let micros = match unit {
                TimeUnit::Second => array.as_primitive::<DurationSecondType>().value(i) * 1_000_000,
                TimeUnit::Millisecond => array.as_primitive::<DurationMillisecondType>().value(i) * 1000,
                TimeUnit::Microsecond => array.as_primitive::<DurationMicrosecondType>().value(i),
                TimeUnit::Nanosecond => array.as_primitive::<DurationNanosecondType>().value(i) / 1000,
            };
            const DAY: i64 = 86_400_000_000;
            Cell::Interval {
                months: 0,
                days: (micros / DAY) as i32,
                micros: micros % DAY,
            }
        }
        _ => Cell::Text(fallback.value(i).to_string()),
    }
}

fn decimal_string(unscaled: i128, scale: i8) -> String {
    let neg = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let s = if scale <= 0 {
        format!("{digits}{}", "0".repeat((-scale) as usize))
    } else {
        let scale = scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{int}.{frac}")
    };
    if neg { format!("-{s}") } else { s }
}

fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if v != 0.0 && (v.abs() >= 1e16 || v.abs() < 1e-4) {
        // PostgreSQL switches to exponent notation for large and tiny values.
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) => {
                let exp: i32 = e.parse().unwrap_or(0);
                format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
            }
            None => s,
        }
    } else {
        format!("{v}")
    }
}

fn timestamp_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let dt = DateTime::from_timestamp(secs, 0).map(|d| d.naive_utc());
    let base = match dt {
        Some(d) => d.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => return micros.to_string(),
    };
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

fn interval_text(months: i32, days: i32, micros: i64) -> String {
    let mut parts = Vec::new();
    let (years, mons) = (months / 12, months % 12);
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n.abs() == 1 { "" } else { "s" });
    if years != 0 {
        parts.push(plural(years as i64, "year"));
    }
    if mons != 0 {
        parts.push(plural(mons as i64, "mon"));
    }
    if days != 0 {
        parts.push(plural(days as i64, "day"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let m = micros.unsigned_abs();
        let (h, rem) = (m / 3_600_000_000, m % 3_600_000_000);
        let (min, rem) = (rem / 60_000_000, rem % 60_000_000);
        let (s, us) = (rem / 1_000_000, rem % 1_000_000);
        let mut t = format!("{sign}{h:02}:{min:02}:{s:02}");
        if us != 0 {
            t.push_str(&format!(".{}", format!("{us:06}").trim_end_matches('0')));
        }
        parts.push(t);
    }
    parts.join(" ")
}

impl Cell {
    /// PostgreSQL's text representation (None for NULL).
    pub fn text(&self) -> Option<String> {
        Some(match self {
            Cell::Null => return None,
            Cell::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Cell::I16(v) => v.to_string(),
            Cell::I32(v) => v.to_string(),
            Cell::I64(v) => v.to_string(),
            // Through the shortest decimal of the f32, so 0.1 prints as 0.1.
            Cell::F32(v) => float_text(v.to_string().parse().unwrap_or(*v as f64)),
            Cell::F64(v) => float_text(*v),
            Cell::Numeric { unscaled, scale } => decimal_string(*unscaled, *scale),
            Cell::Text(s) => s.clone(),
            Cell::Bytes(b) => {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }
            Cell::Date(d) => NaiveDate::from_num_days_from_ce_opt(d + 719_163)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| d.to_string()),
            Cell::Timestamp(m) => timestamp_text(*m),
            Cell::TimestampTz(m) => format!("{}+00", timestamp_text(*m)),
            Cell::Time(m) => {
                let t = timestamp_text(*m);
                t.split_once(' ').map(|(_, t)| t.to_string()).unwrap_or(t)
            }
            Cell::Interval { months, days, micros } => interval_text(*months, *days, *micros),
        })
    }
}

fn numeric_binary(unscaled: i128, scale: i8, out: &mut BytesMut) {
    let scale_u = scale.max(0) as usize;
    let digits = unscaled.unsigned_abs().to_string();
    let padded = format!("{digits:0>width$}", width = scale_u + 1);
    let (int, frac) = padded.split_at(padded.len() - scale_u);
    let int = int.trim_start_matches('0');
    let int_pad = (4 - int.len() % 4) % 4;
    let int = format!("{}{int}", "0".repeat(int_pad));
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac = format!("{frac}{}", "0".repeat(frac_pad));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or("0").parse().unwrap_or(0))
            .collect()
    };
    let mut groups = group(&int);
    let mut weight = groups.len() as i16 - 1;
    groups.extend(group(&frac));
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if unscaled < 0 { 0x4000 } else { 0 });
    out.put_u16(scale_u as u16);
    for g in groups {
        out.put_i16(g);
    }
}

impl ToSql for Cell {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Null => return Ok(IsNull::Yes),
            Cell::Bool(b) => out.put_u8(*b as u8),
            Cell::I16(v) => out.put_i16(*v),
            Cell::I32(v) => out.put_i32(*v),
            Cell::I64(v) => out.put_i64(*v),
            Cell::F32(v) => out.put_f32(*v),
            Cell::F64(v) => out.put_f64(*v),
            Cell::Numeric { unscaled, scale } => numeric_binary(*unscaled, *scale, out),
            Cell::Text(s) => out.put_slice(s.as_bytes()),
            Cell::Bytes(b) => out.put_slice(b),
            Cell::Date(d) => out.put_i32(d - PG_EPOCH_DAYS),
            Cell::Timestamp(m) | Cell::TimestampTz(m) => out.put_i64(m - PG_EPOCH_MICROS),
            Cell::Time(m) => out.put_i64(*m),
            Cell::Interval { months, days, micros } => {
                out.put_i64(*micros);
                out.put_i32(*days);
                out.put_i32(*months);
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl ToSqlText for Cell {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.text() {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.put_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }
}

/// Encode batches as data rows for `fields`.
pub fn data_rows(batches: &[RecordBatch], fields: Arc<Vec<FieldInfo>>) -> Vec<PgWireResult<DataRow>> {
    let mut out = Vec::new();
    let options = ArrowFormat::default().with_null("");
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("every arrow type formats"))
            .collect();
        let mut encoder = DataRowEncoder::new(fields.clone());
        for i in 0..batch.num_rows() {
            let mut result = Ok(());
            for (c, col) in batch.columns().iter().enumerate() {
                if result.is_ok() {
                    result = encoder.encode_field(&cell(col, i, &formatters[c]));
                }
            }
            out.push(result.map(|_| encoder.take_row()));
        }
    }
    out
}

/// Decode bound parameter `value` of PostgreSQL type `ty` into a scalar of
/// the type the planner inferred (`target`, when known).
pub fn parameter(
    value: Option<&[u8]>,
    binary: bool,
    ty: &Type,
    target: Option<&DataType>,
) -> Result<ScalarValue, AdapterError> {
    let bad = |what: &str| {
        AdapterError::InvalidTextRepresentation(format!("invalid binary value for parameter of type {what}"))
    };
    let scalar = match value {
        None => ScalarValue::Null,
        Some(bytes) if !binary => {
            ScalarValue::Utf8(Some(pg_text_input(&String::from_utf8_lossy(bytes), target)))
        }
        Some(b) => {
            let arr = |n: usize| -> Result<&[u8], AdapterError> {
                if b.len() == n { Ok(b) } else { Err(bad(ty.name())) }
            };
            match *ty {
                Type::BOOL => ScalarValue::Boolean(Some(arr(1)?[0] != 0)),
                Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(arr(2)?.try_into().expect("len")))),
                Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(arr(4)?.try_into().expect("len")))),
                Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(arr(8)?.try_into().expect("len")))),
                Type::FLOAT4 => {
                    ScalarValue::Float32(Some(f32::from_be_bytes(arr(4)?.try_into().expect("len"))))
                }
                Type::FLOAT8 => {
                    ScalarValue::Float64(Some(f64::from_be_bytes(arr(8)?.try_into().expect("len"))))
                }
                Type::BYTEA => ScalarValue::Binary(Some(b.to_vec())),
                Type::DATE => ScalarValue::Date32(Some(
                    i32::from_be_bytes(arr(4)?.try_into().expect("len")) + PG_EPOCH_DAYS,
                )),
                Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
                    Some(i64::from_be_bytes(arr(8)?.try_into().expect("len")) + PG_EPOCH_MICROS),
                    None,
                ),
                Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
                    Some(i64::from_be_bytes(arr(8)?.try_into().expect("len")) + PG_EPOCH_MICROS),
                    Some(weir_sql::types::UTC.into()),
                ),
                Type::NUMERIC => {
                    ScalarValue::Utf8(Some(numeric_from_binary(b).ok_or_else(|| bad("numeric"))?))
                }
                _ => ScalarValue::Utf8(Some(String::from_utf8_lossy(b).into_owned())),
            }
        }
    };
    match target {
        Some(t) if &scalar.data_type() != t && !scalar.is_null() => scalar.cast_to(t).map_err(|_| {
            AdapterError::InvalidTextRepresentation(format!(
                "invalid input syntax for type {}: \"{scalar}\"",
                weir_sql::types::sql_type_name(t)
            ))
        }),
        Some(t) if scalar.is_null() => {
            ScalarValue::try_from(t).map_err(|e| AdapterError::Internal(e.to_string()))
        }
        _ => Ok(scalar),
    }
}

/// Normalize PostgreSQL text input that Arrow's parsers read differently:
/// a date may carry a time zone (`2026-11-21 +00`, as JDBC sends it) and an
/// offset may lack minutes (`+00`).
fn pg_text_input(text: &str, target: Option<&DataType>) -> String {
    match target {
        Some(DataType::Date32) => text.split_whitespace().next().unwrap_or(text).to_string(),
        Some(DataType::Timestamp(..)) => {
            let t = text.trim();
            let bytes = t.as_bytes();
            let n = bytes.len();
            let short_offset = n > 3
                && (bytes[n - 3] == b'+' || bytes[n - 3] == b'-')
                && bytes[n - 2].is_ascii_digit()
                && bytes[n - 1].is_ascii_digit()
                && t[..n - 3].contains(':');
            if short_offset {
                format!("{t}:00")
            } else {
                t.to_string()
            }
        }
        _ => text.to_string(),
    }
}

fn numeric_from_binary(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let n = i16::from_be_bytes([b[0], b[1]]) as usize;
    let weight = i16::from_be_bytes([b[2], b[3]]) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = u16::from_be_bytes([b[6], b[7]]) as usize;
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let digits: Vec<i32> = (0..n)
        .map(|i| i16::from_be_bytes([b[8 + 2 * i], b[9 + 2 * i]]) as i32)
        .collect();
    let mut int = String::new();
    for w in 0..=weight.max(-1) {
        let d = digits.get(w as usize).copied().unwrap_or(0);
        if int.is_empty() {
            int.push_str(&d.to_string())
        } else {
            int.push_str(&format!("{d:04}"))
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut w = weight + 1;
    while frac.len() < dscale {
        let d = if w < 0 {
            0
        } else {
            digits.get(w as usize).copied().unwrap_or(0)
        };
        frac.push_str(&format!("{d:04}"));
        w += 1;
    }
    frac.truncate(dscale);
    let s = if dscale > 0 { format!("{int}.{frac}") } else { int };
    Some(if sign == 0x4000 { format!("-{s}") } else { s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips_through_binary() {
        for (u, s, text) in [
            (12345i128, 2i8, "123.45"),
            (-5, 3, "-0.005"),
            (0, 0, "0"),
            (100000000, 0, "100000000"),
            (1, 0, "1"),
        ] {
            assert_eq!(decimal_string(u, s), text);
            let mut b = BytesMut::new();
            numeric_binary(u, s, &mut b);
            assert_eq!(numeric_from_binary(&b).unwrap(), text);
        }
    }

    #[test]
    fn intervals_print_like_postgres() {
        assert_eq!(
            interval_text(14, 3, 3_600_000_000 * 4 + 5_000_000),
            "1 year 2 mons 3 days 04:00:05"
        );
        assert_eq!(interval_text(0, 0, 0), "00:00:00");
        assert_eq!(interval_text(0, 1, 0), "1 day");
    }
}
