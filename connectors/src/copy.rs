//! Decoding `COPY ... FROM STDIN` data (text and CSV formats) into Arrow.
//!
//! Fields are split per PostgreSQL's rules, then cast column by column to
//! the table's types. A value that does not parse is reported with its line
//! and column, and nothing of the COPY is applied.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef};

/// How the data is laid out.
#[derive(Debug, Clone)]
pub struct CopyFormat {
    pub csv: bool,
    pub header: bool,
    pub delimiter: char,
    /// The string that means NULL (`\N` in text, empty in CSV by default).
    pub null: String,
}

impl CopyFormat {
    pub fn text() -> Self {
        CopyFormat {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
        }
    }

    pub fn csv() -> Self {
        CopyFormat {
            csv: true,
            header: false,
            delimiter: ',',
            null: String::new(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CopyError {
    /// A line has the wrong number of fields.
    #[error("{message} (line {line})")]
    Malformed { line: usize, message: String },
    /// A value does not parse as its column's type.
    #[error("invalid input syntax for type {type_name}: \"{value}\" (line {line}, column {column})")]
    InvalidValue {
        line: usize,
        column: String,
        type_name: String,
        value: String,
    },
}

/// Decode `data` into a batch of `schema`.
pub fn decode(data: &[u8], schema: &SchemaRef, format: &CopyFormat) -> Result<RecordBatch, CopyError> {
    let text = String::from_utf8_lossy(data);
    let n_cols = schema.fields().len();
    let mut columns = TextColumns::new(n_cols);
    let records = if format.csv {
        split_csv(&text, format)
    } else {
        split_text(&text, format)
    };
    for (index, (line, fields)) in records.into_iter().enumerate() {
        if index == 0 && format.header {
            continue;
        }
        if fields.len() == 1 && fields[0].as_deref() == Some("\\.") {
            break;
        }
        if fields.len() != n_cols {
            let message = if fields.len() < n_cols {
                format!(
                    "missing data for column \"{}\"",
                    schema.field(fields.len()).name()
                )
            } else {
                "extra data after last expected column".to_string()
            };
            return Err(CopyError::Malformed { line, message });
        }
        columns.push_row(fields.iter().map(|f| f.as_deref()));
        columns.lines.push(line);
    }
    columns.finish(schema)
}

/// One table's rows as text values, column by column, turned into a batch
/// by the same per-type parsers `COPY` uses (so a row built here from a
/// change stream equals the row its snapshot line gave).
pub struct TextColumns {
    columns: Vec<StringBuilder>,
    /// The line each row came from, for errors (row numbers when empty).
    lines: Vec<usize>,
    rows: usize,
}

impl TextColumns {
    pub fn new(columns: usize) -> Self {
        TextColumns {
            columns: (0..columns).map(|_| StringBuilder::new()).collect(),
            lines: Vec::new(),
            rows: 0,
        }
    }

    /// Add a row; missing trailing values are NULL, extra ones ignored.
    pub fn push_row<'a>(&mut self, values: impl IntoIterator<Item = Option<&'a str>>) {
        let mut values = values.into_iter();
        for column in &mut self.columns {
            column.append_option(values.next().flatten());
        }
        self.rows += 1;
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows as a batch of `schema`, or the first value that does not
    /// parse.
    pub fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, CopyError> {
        let lines = if self.lines.len() == self.rows {
            std::mem::take(&mut self.lines)
        } else {
            (1..=self.rows).collect()
        };
        let arrays = self
            .columns
            .iter_mut()
            .zip(schema.fields())
            .map(|(values, field)| column(&values.finish(), field.name(), field.data_type(), &lines))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )
        .map_err(|e| CopyError::Malformed {
            line: 0,
            message: e.to_string(),
        })
    }
}

fn column(values: &StringArray, name: &str, ty: &DataType, lines: &[usize]) -> Result<ArrayRef, CopyError> {
    let invalid = |i: usize, type_name: &str| CopyError::InvalidValue {
        line: lines[i],
        column: name.into(),
        type_name: type_name.into(),
        value: values.value(i).to_string(),
    };
    if matches!(ty, DataType::Binary) {
        let decoded: Vec<Option<Vec<u8>>> = parse_each(values, "bytea", decode_bytea, invalid)?;
        return Ok(Arc::new(BinaryArray::from_iter(decoded)));
    }
    if let DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano) = ty {
        // PostgreSQL's interval output ("1 year 2 mons 3 days 04:05:06.7")
        // is not a form Arrow's cast reads.
        let parsed = parse_each(values, "interval", pg_interval, invalid)?;
        return Ok(Arc::new(arrow::array::IntervalMonthDayNanoArray::from(parsed)));
    }
    if ty == &DataType::Utf8 {
        return Ok(Arc::new(values.clone()));
    }
    let strings: ArrayRef = if ty == &DataType::Boolean {
        Arc::new(StringArray::from_iter(
            values.iter().map(|v| v.map(normalize_bool)),
        ))
    } else {
        Arc::new(values.clone())
    };
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    let cast = cast_with_options(&strings, ty, &safe).map_err(|e| CopyError::Malformed {
        line: lines.first().copied().unwrap_or(0),
        message: e.to_string(),
    })?;
    // A value that was present but became NULL did not parse.
    if cast.null_count() != strings.null_count() {
        for i in 0..values.len() {
            if strings.is_valid(i) && cast.is_null(i) {
                return Err(invalid(i, &ty.to_string().to_lowercase()));
            }
        }
    }
    Ok(cast)
}

/// Each present value of `values` through `parse`; the first that does not
/// parse is an error naming `type_name`.
fn parse_each<T>(
    values: &StringArray,
    type_name: &str,
    parse: impl Fn(&str) -> Option<T>,
    invalid: impl Fn(usize, &str) -> CopyError,
) -> Result<Vec<Option<T>>, CopyError> {
    (0..values.len())
        .map(|i| match values.is_valid(i) {
            false => Ok(None),
            true => parse(values.value(i))
                .map(Some)
                .ok_or_else(|| invalid(i, type_name)),
        })
        .collect()
}

/// An interval in PostgreSQL's output style (`postgres`: `1 year 2 mons
/// -3 days 04:05:06.789`, the `@ ... ago` verbose style) or a number of
/// units per word (`3 hours`); `None` if it is neither.
pub fn pg_interval(s: &str) -> Option<arrow::datatypes::IntervalMonthDayNano> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut nanos: i128 = 0;
    let mut text = s.trim().trim_start_matches('@').trim();
    let ago = text.ends_with(" ago");
    if ago {
        text = text.trim_end_matches(" ago");
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.contains(':') {
            let (sign, hms) = match w.strip_prefix('-') {
                Some(rest) => (-1i128, rest),
                None => (1, w.trim_start_matches('+')),
            };
            let parts: Vec<&str> = hms.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 {
                return None;
            }
            let h: i128 = parts[0].parse().ok()?;
            let m: i128 = parts[1].parse().ok()?;
            let sec_nanos: i128 = match parts.get(2) {
                Some(sec) => seconds_nanos(sec)?,
                None => 0,
            };
            nanos += sign * ((h * 3600 + m * 60) * 1_000_000_000 + sec_nanos);
            i += 1;
            continue;
        }
        let unit = words.get(i + 1)?.to_ascii_lowercase();
        let unit = unit.trim_end_matches(',');
        let whole: i64 = w.split('.').next()?.parse().ok()?;
        match unit {
            "year" | "years" => months += whole * 12,
            "mon" | "mons" | "month" | "months" => months += whole,
            "week" | "weeks" => days += whole * 7,
            "day" | "days" => days += whole,
            "hour" | "hours" => nanos += seconds_nanos(w)? * 3600,
            "min" | "mins" | "minute" | "minutes" => nanos += seconds_nanos(w)? * 60,
            "sec" | "secs" | "second" | "seconds" => nanos += seconds_nanos(w)?,
            _ => return None,
        }
        i += 2;
    }
    let sign = if ago { -1 } else { 1 };
    Some(arrow::datatypes::IntervalMonthDayNano::new(
        i32::try_from(months * sign).ok()?,
        i32::try_from(days * sign).ok()?,
        i64::try_from(nanos * sign as i128).ok()?,
    ))
}

/// `[-]S[.fffffffff]` seconds in nanoseconds.
fn seconds_nanos(s: &str) -> Option<i128> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i128 = whole.parse().ok()?;
    if frac.len() > 9 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac: i128 = format!("{frac:0<9}").parse().ok()?;
    let v = whole * 1_000_000_000 + frac;
    Some(if neg { -v } else { v })
}

fn normalize_bool(s: &str) -> &str {
    match s {
        "t" | "T" | "on" => "true",
        "f" | "F" | "off" => "false",
        s => s,
    }
}

fn decode_bytea(s: &str) -> Option<Vec<u8>> {
    match s.strip_prefix("\\x") {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect(),
        None => Some(s.as_bytes().to_vec()),
    }
}

/// Split PostgreSQL text-format data into (line number, fields).
fn split_text(text: &str, format: &CopyFormat) -> Vec<(usize, Vec<Option<String>>)> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() && i + 1 == text.split('\n').count() {
            continue;
        }
        let mut fields = Vec::new();
        for raw in line.split(format.delimiter) {
            if raw == format.null {
                fields.push(None);
            } else {
                fields.push(Some(unescape(raw)));
            }
        }
        out.push((i + 1, fields));
    }
    out
}

/// The fields of one line of `COPY` text format (tab-separated, `\N` for
/// NULL), unescaped.
pub fn text_fields(line: &str) -> Vec<Option<String>> {
    line.split('\t')
        .map(|raw| (raw != "\\N").then(|| unescape(raw)))
        .collect()
}

/// One line of `COPY` text format (without the newline) holding `values`.
pub fn text_line<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut out = String::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match v {
            None => out.push_str("\\N"),
            Some(s) => {
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('v') => out.push('\u{b}'),
            Some(d @ '0'..='7') => {
                let mut v = d.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(x) => {
                            v = v * 8 + x;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(v).unwrap_or('?'));
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Split CSV data into (line number, fields). Unquoted values equal to the
/// NULL string are NULL; quoted values never are.
fn split_csv(text: &str, format: &CopyFormat) -> Vec<(usize, Vec<Option<String>>)> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    let mut any = false;
    let finish = |field: &mut String, quoted: &mut bool, fields: &mut Vec<Option<String>>| {
        let v = std::mem::take(field);
        fields.push(if !*quoted && v == format.null {
            None
        } else {
            Some(v)
        });
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                quoted = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                finish(&mut field, &mut quoted, &mut fields);
                out.push((record_line, std::mem::take(&mut fields)));
                line += 1;
                record_line = line;
                any = false;
            }
            c if c == format.delimiter => finish(&mut field, &mut quoted, &mut fields),
            c => field.push(c),
        }
    }
    if any {
        finish(&mut field, &mut quoted, &mut fields);
        out.push((record_line, fields));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_intervals() {
        use arrow::datatypes::IntervalMonthDayNano as I;
        let h = 3_600_000_000_000i64;
        assert_eq!(
            super::pg_interval("1 day 02:03:04"),
            Some(I::new(0, 1, 2 * h + 3 * 60_000_000_000 + 4_000_000_000))
        );
        assert_eq!(
            super::pg_interval("1 year 2 mons -3 days -00:00:01.5"),
            Some(I::new(14, -3, -1_500_000_000))
        );
        assert_eq!(super::pg_interval("@ 3 hours ago"), Some(I::new(0, 0, -3 * h)));
        assert_eq!(super::pg_interval("00:00:00"), Some(I::new(0, 0, 0)));
        assert_eq!(super::pg_interval("soon"), None);
    }

    #[test]
    fn text_lines_round_trip() {
        let values = [Some("a\tb\\c\nd"), None, Some(""), Some("\\N")];
        let line = super::text_line(values);
        assert_eq!(line, "a\\tb\\\\c\\nd\t\\N\t\t\\\\N");
        let back: Vec<Option<String>> = super::text_fields(&line);
        assert_eq!(back, values.map(|v| v.map(String::from)).to_vec());
    }

    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{Field, Int64Type, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn text_format_with_nulls_and_escapes() {
        let b = decode(b"1\ta\\tb\n2\t\\N\n", &schema(), &CopyFormat::text()).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.column(0).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![1, 2])
        );
        assert_eq!(b.column(1).as_string::<i32>().value(0), "a\tb");
        assert!(b.column(1).is_null(1));
    }

    #[test]
    fn csv_with_header_and_quotes() {
        let f = CopyFormat {
            header: true,
            ..CopyFormat::csv()
        };
        let b = decode(b"k,s\n1,\"x,\"\"y\"\"\"\n2,\n", &schema(), &f).unwrap();
        assert_eq!(b.column(1).as_string::<i32>().value(0), "x,\"y\"");
        assert!(b.column(1).is_null(1));
    }

    #[test]
    fn bad_values_name_line_and_column() {
        let err = decode(b"1\ta\nx\tb\n", &schema(), &CopyFormat::text()).unwrap_err();
        assert!(matches!(err, CopyError::InvalidValue { line: 2, ref column, .. } if column == "k"));
    }
}
