//! The SQL types Weir stores, and their Arrow representation.
//!
//! This is the one place that says which column types a table may have. The
//! pgwire edge maps Arrow types back to PostgreSQL OIDs in the coordinator.

use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo};

use crate::error::SqlError;

/// The time zone Weir stores `timestamptz` values in.
pub const UTC: &str = "+00:00";

/// A column type as declared in `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    pub data_type: DataType,
    /// `varchar(n)`: the maximum length in characters, checked on write.
    pub max_length: Option<u64>,
    /// The type's name as PostgreSQL prints it (for `SHOW COLUMNS`).
    pub sql_name: String,
}

/// Map a parsed SQL type to the Arrow type Weir stores it as.
pub fn column_type(ty: &ast::DataType) -> Result<ColumnType, SqlError> {
    use ast::DataType as D;
    let plain = |data_type: DataType, name: &str| ColumnType {
        data_type,
        max_length: None,
        sql_name: name.to_string(),
    };
    Ok(match ty {
        D::Bool | D::Boolean => plain(DataType::Boolean, "boolean"),
        D::SmallInt(_) | D::Int2(_) => plain(DataType::Int16, "smallint"),
        D::Int(_) | D::Integer(_) | D::Int4(_) => plain(DataType::Int32, "integer"),
        D::BigInt(_) | D::Int8(_) => plain(DataType::Int64, "bigint"),
        D::Real | D::Float4 => plain(DataType::Float32, "real"),
        D::DoublePrecision | D::Float8 | D::Double(_) => plain(DataType::Float64, "double precision"),
        D::Float(info) => match info {
            ExactNumberInfo::Precision(p) | ExactNumberInfo::PrecisionAndScale(p, _) if *p <= 24 => {
                plain(DataType::Float32, "real")
            }
            _ => plain(DataType::Float64, "double precision"),
        },
        D::Numeric(info) | D::Decimal(info) | D::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => (38, 10),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s as u64),
            };
            if p == 0 || p > 38 {
                return Err(SqlError::Unsupported(format!(
                    "numeric precision {p} (Weir supports 1 to 38)"
                )));
            }
            if s > p {
                return Err(SqlError::Plan(format!(
                    "NUMERIC scale {s} must be between 0 and precision {p}"
                )));
            }
            ColumnType {
                data_type: DataType::Decimal128(p as u8, s as i8),
                max_length: None,
                sql_name: if matches!(info, ExactNumberInfo::None) {
                    "numeric".into()
                } else {
                    format!("numeric({p},{s})")
                },
            }
        }
        D::Text | D::String(_) => plain(DataType::Utf8, "text"),
        D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
            let max_length = match len {
                Some(ast::CharacterLength::IntegerLength { length, .. }) => Some(*length),
                _ => None,
            };
            ColumnType {
                data_type: DataType::Utf8,
                max_length,
                sql_name: match max_length {
                    Some(n) => format!("character varying({n})"),
                    None => "character varying".into(),
                },
            }
        }
        D::Bytea => plain(DataType::Binary, "bytea"),
        D::Date => plain(DataType::Date32, "date"),
        D::Timestamp(_, tz) => match tz {
            ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone => plain(
                DataType::Timestamp(TimeUnit::Microsecond, None),
                "timestamp without time zone",
            ),
            ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => plain(
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
                "timestamp with time zone",
            ),
        },
        D::Interval { .. } => plain(DataType::Interval(IntervalUnit::MonthDayNano), "interval"),
        D::Custom(name, _) => {
            let n = name.to_string().to_ascii_lowercase();
            match n.as_str() {
                "timestamptz" => plain(
                    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
                    "timestamp with time zone",
                ),
                "int2" => plain(DataType::Int16, "smallint"),
                "int4" => plain(DataType::Int32, "integer"),
                "int8" => plain(DataType::Int64, "bigint"),
                "float4" => plain(DataType::Float32, "real"),
                "float8" => plain(DataType::Float64, "double precision"),
                "bool" => plain(DataType::Boolean, "boolean"),
                _ => return Err(SqlError::UndefinedType(n)),
            }
        }
        other => {
            return Err(SqlError::Unsupported(format!("column type {other}")));
        }
    })
}

/// The PostgreSQL name of an Arrow type, for catalog output.
pub fn sql_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) => "interval".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// The column type (as SQL) a table declares to hold values of Arrow type
/// `dt` read from outside (a file's schema): the type [`sql_type_name`]
/// names where Weir stores it, text for anything else Arrow can print, and
/// `None` for what it cannot.
pub fn storable_type_name(dt: &DataType) -> Option<String> {
    Some(match dt {
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => format!("numeric({p},{s})"),
        DataType::Null => "text".into(),
        DataType::FixedSizeBinary(_) => "bytea".into(),
        DataType::Dictionary(_, value) => return storable_type_name(value),
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(..) => sql_type_name(dt),
        other if arrow::compute::can_cast_types(other, &DataType::Utf8) => "text".into(),
        _ => return None,
    })
}

/// Parse PostgreSQL's interval input (`1 year 2 mons 3 days 04:05:06.5`,
/// `-1 day`, `2 hours ago`), which Arrow's parser does not fully accept.
pub fn parse_interval(s: &str) -> Option<arrow::datatypes::IntervalMonthDayNano> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut nanos: i128 = 0;
    let mut tokens: Vec<&str> = s.split_whitespace().collect();
    let ago = tokens.last().is_some_and(|t| t.eq_ignore_ascii_case("ago"));
    if ago {
        tokens.pop();
    }
    if tokens.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if t.contains(':') {
            let (neg, body) = match t.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, t.strip_prefix('+').unwrap_or(t)),
            };
            let parts: Vec<&str> = body.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 {
                return None;
            }
            let h: i128 = parts[0].parse().ok()?;
            let m: i128 = parts[1].parse().ok()?;
            let sec: f64 = parts.get(2).map(|p| p.parse().ok()).unwrap_or(Some(0.0))?;
            let total = h * 3_600_000_000_000 + m * 60_000_000_000 + (sec * 1e9).round() as i128;
            nanos += if neg { -total } else { total };
            i += 1;
            continue;
        }
        let value: f64 = t.parse().ok()?;
        let unit = tokens.get(i + 1)?.to_ascii_lowercase();
        let unit = unit.trim_end_matches(',');
        let whole = value.trunc() as i64;
        let frac = value - value.trunc();
        match unit.trim_end_matches('s') {
            "year" | "yr" | "y" => months += (value * 12.0).round() as i64,
            "mon" | "month" => {
                months += whole;
                days += (frac * 30.0).round() as i64;
            }
            "week" | "w" => days += (value * 7.0).round() as i64,
            "day" | "d" => {
                days += whole;
                nanos += (frac * 86_400e9).round() as i128;
            }
            "hour" | "hr" | "h" => nanos += (value * 3_600e9).round() as i128,
            "minute" | "min" | "m" => nanos += (value * 60e9).round() as i128,
            "second" | "sec" => nanos += (value * 1e9).round() as i128,
            "millisecond" | "ms" => nanos += (value * 1e6).round() as i128,
            "microsecond" | "us" => nanos += (value * 1e3).round() as i128,
            _ => return None,
        }
        i += 2;
    }
    let sign = if ago { -1 } else { 1 };
    Some(arrow::datatypes::IntervalMonthDayNano::new(
        i32::try_from(sign * months).ok()?,
        i32::try_from(sign * days).ok()?,
        i64::try_from(sign as i128 * nanos).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_interval_input() {
        let v = parse_interval("1 year 2 months 3 days 04:05:06.5").unwrap();
        assert_eq!((v.months, v.days, v.nanoseconds), (14, 3, 14_706_500_000_000));
        let v = parse_interval("2 hours ago").unwrap();
        assert_eq!(v.nanoseconds, -7_200_000_000_000);
        assert!(parse_interval("soon").is_none());
    }
}
