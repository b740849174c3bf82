//! Files as a source: the objects a URL pattern names (`file:///dir/*.csv`,
//! `s3://bucket/prefix/**/*.parquet`, read through `object_store`), a table
//! schema inferred from one of them, and each file decoded into Arrow
//! batches of a table's schema.
//!
//! A malformed file or row is an error naming the file and, for CSV and
//! JSON, the line: decoding stops there and hands back the rows before it,
//! so the caller can ingest those, report the error and resume at that row
//! once the file is fixed. Nothing is skipped silently.
//!
//! S3 is configured from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible servers, `AWS_ALLOW_HTTP`), as the state store is.
//!
//! This module lists and decodes. Which files were ingested, durability
//! and the catalog belong to the coordinator.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// Records read to infer a schema.
const INFER_RECORDS: usize = 1000;

/// How a file's bytes are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Parquet,
    /// Columns are taken in order; with `header`, the first line is
    /// skipped (and names the columns of an inferred schema).
    Csv {
        header: bool,
        delimiter: u8,
    },
    /// Newline-delimited JSON objects; fields are matched by name.
    Json,
}

impl Format {
    /// `FORMAT PARQUET | CSV | JSON` (any case), CSV with its options.
    pub fn from_name(name: &str, header: bool, delimiter: u8) -> Option<Format> {
        match name.to_ascii_uppercase().as_str() {
            "PARQUET" => Some(Format::Parquet),
            "CSV" => Some(Format::Csv { header, delimiter }),
            "JSON" | "NDJSON" | "JSONL" => Some(Format::Json),
            _ => None,
        }
    }

    /// The format a file name's extension implies.
    pub fn from_extension(url: &str) -> Option<&'static str> {
        let ext = url.rsplit('.').next()?.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some("PARQUET"),
            "csv" => Some("CSV"),
            "json" | "ndjson" | "jsonl" => Some("JSON"),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Format::Parquet => "PARQUET",
            Format::Csv { .. } => "CSV",
            Format::Json => "JSON",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("invalid file URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// A file (and, where known, its line) that cannot be decoded.
    #[error("{file}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Malformed {
        file: String,
        line: Option<u64>,
        message: String,
    },
}

/// One file a pattern matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The file's full URL (what status and progress name).
    pub url: String,
    location: Path,
    pub size: u64,
}

/// The files a URL pattern names, in one object store.
pub struct Files {
    store: Arc<dyn ObjectStore>,
    /// `file:///` or `s3://bucket/`: prefixed to a location for its URL.
    root: String,
    /// Where listing starts: the pattern's part before its first wildcard.
    prefix: Path,
    /// The pattern, relative to the store's root.
    pattern: String,
}

impl Files {
    /// Open the store `url` points into: `file:///abs/dir/*.csv` or
    /// `s3://bucket/prefix/*.parquet`. `*` and `?` match within one path
    /// segment, `**` across segments; a URL without wildcards names one
    /// file or every file under a directory.
    pub fn open(url: &str) -> Result<Files, FileError> {
        let invalid = |reason: &str| FileError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (store, root, pattern): (Arc<dyn ObjectStore>, String, &str) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("no bucket named"));
                }
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| invalid(&e.to_string()))?;
                (Arc::new(s3), format!("s3://{bucket}/"), key)
            } else if let Some(path) = url.strip_prefix("file://") {
                let Some(rel) = path.strip_prefix('/') else {
                    return Err(invalid("a file URL needs an absolute path: file:///dir/*.csv"));
                };
                (
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    "file:///".into(),
                    rel,
                )
            } else {
                return Err(invalid("the scheme must be file:// or s3://"));
            };
        let pattern = pattern.trim_end_matches('/').to_string();
        if pattern.is_empty() {
            return Err(invalid("no path named"));
        }
        let fixed: Vec<&str> = pattern
            .split('/')
            .take_while(|s| !s.contains(['*', '?']))
            .collect();
        let prefix = Path::parse(fixed.join("/")).map_err(|e| invalid(&e.to_string()))?;
        Ok(Files {
            store,
            root,
            prefix,
            pattern,
        })
    }

    /// Every file the pattern matches now, in URL order. A directory that
    /// does not exist (yet) matches nothing; a bucket that does not is an
    /// error.
    pub async fn list(&self) -> Result<Vec<FileRef>, FileError> {
        let wild = self.pattern.contains(['*', '?']);
        let local = self.root == "file:///";
        let listed: Vec<object_store::ObjectMeta> =
            match self.store.list(Some(&self.prefix)).try_collect().await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) if local => Vec::new(),
                Err(e) => return Err(e.into()),
            };
        let mut files: Vec<FileRef> = listed
            .into_iter()
            .filter(|m| {
                let loc = m.location.as_ref();
                if wild {
                    glob_match(self.pattern.as_bytes(), loc.as_bytes())
                } else {
                    loc == self.pattern || loc.starts_with(&format!("{}/", self.pattern))
                }
            })
            .map(|m| FileRef {
                url: format!("{}{}", self.root, m.location),
                location: m.location,
                size: m.size,
            })
            .collect();
        // A single file named without wildcards lists as itself.
        if files.is_empty()
            && !wild
            && let Ok(meta) = self.store.head(&self.prefix).await
        {
            files.push(FileRef {
                url: format!("{}{}", self.root, meta.location),
                location: meta.location,
                size: meta.size,
            });
        }
        files.sort_by(|a, b| a.url.cmp(&b.url));
        Ok(files)
    }

    /// A file's bytes.
    pub async fn fetch(&self, file: &FileRef) -> Result<Bytes, FileError> {
        Ok(self.store.get(&file.location).await?.bytes().await?)
    }
}

/// Whether `name` matches `pattern` (`*` and `?` within a segment, `**`
/// across segments).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            // `**/` also matches no directory at all.
            let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=name.len()).any(|i| glob_match(rest, &name[i..]) || glob_match(rest_no_slash, &name[i..]))
        }
        Some((b'*', rest)) => {
            let segment = name.iter().position(|&c| c == b'/').unwrap_or(name.len());
            (0..=segment).any(|i| glob_match(rest, &name[i..]))
        }
        Some((b'?', rest)) => matches!(name.first(), Some(c) if *c != b'/') && glob_match(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob_match(rest, &name[1..]),
    }
}

/// The schema of `data` (file `file`) in `format`, as the format's reader
/// infers it (CSV and JSON from their first records).
pub fn infer_schema(format: &Format, data: &Bytes, file: &str) -> Result<SchemaRef, FileError> {
    let malformed = |e: ArrowError| FileError::Malformed {
        file: file.to_string(),
        line: None,
        message: arrow_message(&e),
    };
    match format {
        Format::Parquet => {
            let builder =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data.clone())
                    .map_err(|e| FileError::Malformed {
                        file: file.to_string(),
                        line: None,
                        message: e.to_string(),
                    })?;
            Ok(builder.schema().clone())
        }
        Format::Csv { header, delimiter } => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(*header)
                .with_delimiter(*delimiter)
                .infer_schema(Cursor::new(data.as_ref()), Some(INFER_RECORDS))
                .map_err(malformed)?;
            Ok(Arc::new(schema))
        }
        Format::Json => {
            let (schema, _) =
                arrow::json::reader::infer_json_schema(Cursor::new(data.as_ref()), Some(INFER_RECORDS))
                    .map_err(malformed)?;
            Ok(Arc::new(schema))
        }
    }
}

/// What decoding a file gave: its rows after the first `skip`, in
/// batches of `schema`, up to the first malformed row, and the error
/// that stopped it (if one did).
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    pub error: Option<FileError>,
}

/// What a table's column demands of a value beyond its type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    pub not_null: bool,
    /// `varchar(n)`: at most this many characters.
    pub max_chars: Option<u64>,
}

/// Decode `data` (file `file`) into batches of `schema`, whose columns
/// keep `rules` (one per column), skipping the file's first `skip` rows
/// (already ingested).
pub fn decode(
    format: &Format,
    data: &Bytes,
    file: &str,
    schema: &SchemaRef,
    rules: &[Rule],
    skip: u64,
) -> Decoded {
    let mut batches = Vec::new();
    // Readers produce nullable columns of types they parse; NOT NULL and
    // the remaining types are settled here, row by row, with lines.
    let read_schema = read_schema(format, schema);
    let raw = match format {
        Format::Parquet => decode_parquet(data, file, &mut batches),
        Format::Csv { header, delimiter } => {
            decode_csv(data, file, &read_schema, *header, *delimiter, &mut batches)
        }
        Format::Json => decode_json(data, file, &read_schema, &mut batches),
    };
    let mut error = raw.err();
    let mut out = Vec::new();
    let mut row = 0u64;
    for (batch, lines) in batches {
        // A bad row ends the file; the rows before it still count.
        let (good, failed) = match conform(&batch, schema, rules) {
            Ok(b) => (Some(b), None),
            Err((at, message)) => (
                conform(&batch.slice(0, at), schema, rules).ok(),
                Some((at, message)),
            ),
        };
        if let Some(good) = good {
            let n = good.num_rows() as u64;
            if row + n > skip {
                let from = skip.saturating_sub(row) as usize;
                out.push(good.slice(from, good.num_rows() - from));
            }
            row += n;
        }
        if let Some((at, message)) = failed {
            error = Some(FileError::Malformed {
                file: file.to_string(),
                line: match &lines {
                    Lines::Unknown => None,
                    Lines::Listed(l) => l.get(at).copied(),
                    Lines::CsvFrom(from, delimiter) => {
                        record_lines(data, *from, at + 1, &read_schema, *delimiter)
                            .last()
                            .copied()
                    }
                },
                message,
            });
            break;
        }
    }
    Decoded { batches: out, error }
}

/// The schema a format's reader decodes into for table `schema`: every
/// column nullable, and types the reader cannot parse read as text.
fn read_schema(format: &Format, schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let parses = match format {
                Format::Parquet => true,
                Format::Csv { .. } | Format::Json => matches!(
                    f.data_type(),
                    DataType::Boolean
                        | DataType::Int16
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::Float32
                        | DataType::Float64
                        | DataType::Decimal128(..)
                        | DataType::Utf8
                        | DataType::Date32
                        | DataType::Timestamp(..)
                ),
            };
            let ty = if parses {
                f.data_type().clone()
            } else {
                DataType::Utf8
            };
            Field::new(f.name(), ty, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `batch` as a batch of `schema`: columns by name (CSV's come in order
/// already), cast to the table's types, `rules` checked. On failure, the
/// first bad row and why.
fn conform(batch: &RecordBatch, schema: &SchemaRef, rules: &[Rule]) -> Result<RecordBatch, (usize, String)> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let rule = rules.get(i).copied().unwrap_or_default();
        let column = match batch.schema().index_of(field.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) => new_null_array(field.data_type(), batch.num_rows()),
        };
        let column = if column.data_type() == field.data_type() {
            column
        } else {
            let options = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            match arrow::compute::cast_with_options(&column, field.data_type(), &options) {
                Ok(c) => c,
                Err(e) => {
                    // Find the row: the first that does not cast alone.
                    let at = (0..column.len())
                        .find(|&i| {
                            arrow::compute::cast_with_options(
                                &column.slice(i, 1),
                                field.data_type(),
                                &options,
                            )
                            .is_err()
                        })
                        .unwrap_or(0);
                    return Err((at, format!("column \"{}\": {}", field.name(), arrow_message(&e))));
                }
            }
        };
        if (rule.not_null || !field.is_nullable()) && column.null_count() > 0 {
            let at = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
            return Err((
                at,
                format!(
                    "null value in column \"{}\" violates not-null constraint",
                    field.name()
                ),
            ));
        }
        if let (Some(max), Some(text)) = (
            rule.max_chars,
            column.as_any().downcast_ref::<arrow::array::StringArray>(),
        ) && let Some(at) =
            (0..text.len()).find(|&i| text.is_valid(i) && text.value(i).chars().count() as u64 > max)
        {
            return Err((
                at,
                format!(
                    "value too long for type character varying({max}) in column \"{}\"",
                    field.name()
                ),
            ));
        }
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| (0, arrow_message(&e)))
}

/// Where a decoded batch's rows are in the file.
enum Lines {
    /// Parquet: rows have no lines.
    Unknown,
    /// Each row's line (JSON).
    Listed(Vec<u64>),
    /// The batch's records start at this byte (CSV): lines are found
    /// only when one is needed, by decoding the records again.
    CsvFrom(usize, u8),
}

/// A decoded batch and where its rows are.
type Lined = (RecordBatch, Lines);

fn decode_parquet(data: &Bytes, file: &str, out: &mut Vec<Lined>) -> Result<(), FileError> {
    let malformed = |message: String| FileError::Malformed {
        file: file.to_string(),
        line: None,
        message,
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data.clone())
        .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
        .map_err(|e| malformed(e.to_string()))?;
    for batch in reader {
        out.push((batch.map_err(|e| malformed(arrow_message(&e)))?, Lines::Unknown));
    }
    Ok(())
}

/// The 1-based line at byte `offset` of `data`.
fn line_at(data: &[u8], offset: usize) -> u64 {
    1 + data[..offset].iter().filter(|&&c| c == b'\n').count() as u64
}

/// A CSV decoder of `schema`'s columns, `rows` records per batch.
fn csv_decoder(schema: &SchemaRef, delimiter: u8, rows: usize) -> arrow::csv::reader::Decoder {
    arrow::csv::ReaderBuilder::new(schema.clone())
        .with_delimiter(delimiter)
        .with_batch_size(rows)
        .build_decoder()
}

/// Past the line breaks at `pos` (blank lines are no record): the next
/// position and how many lines were passed.
fn skip_blank(data: &[u8], mut pos: usize) -> (usize, u64) {
    let mut lines = 0;
    while let Some(&c) = data.get(pos).filter(|&&c| c == b'\n' || c == b'\r') {
        lines += u64::from(c == b'\n');
        pos += 1;
    }
    (pos, lines)
}

fn decode_csv(
    data: &Bytes,
    file: &str,
    schema: &SchemaRef,
    header: bool,
    delimiter: u8,
    out: &mut Vec<Lined>,
) -> Result<(), FileError> {
    // The header is one line (names with line breaks in them are not
    // supported in headers).
    let start = if header {
        data.iter()
            .position(|&c| c == b'\n')
            .map_or(data.len(), |i| i + 1)
    } else {
        0
    };
    let data = data.as_ref();
    let mut decoder = csv_decoder(schema, delimiter, BATCH_ROWS);
    let mut pos = start;
    let mut batch_start = start;
    loop {
        let step = decoder.decode(&data[pos..]).and_then(|n| {
            pos += n;
            if n == 0 || decoder.capacity() == 0 {
                decoder.flush().map(|b| (n, b))
            } else {
                Ok((n, None))
            }
        });
        match step {
            Ok((_, Some(batch))) => {
                out.push((batch, Lines::CsvFrom(batch_start, delimiter)));
                batch_start = pos;
            }
            Ok((0, None)) => return Ok(()),
            Ok(_) => {}
            Err(_) => {
                // Find the record that fails on its own, keeping the rows
                // before it.
                let (good, offset, e) = first_bad_record(data, batch_start, schema, delimiter);
                if let Some(batch) = good {
                    out.push((batch, Lines::CsvFrom(batch_start, delimiter)));
                }
                return Err(FileError::Malformed {
                    file: file.to_string(),
                    line: Some(line_at(data, offset)),
                    message: arrow_message(&e),
                });
            }
        }
    }
}

/// The lines the `rows` records starting at byte `from` start on.
fn record_lines(data: &[u8], from: usize, rows: usize, schema: &SchemaRef, delimiter: u8) -> Vec<u64> {
    let mut decoder = csv_decoder(schema, delimiter, 1);
    let mut lines = Vec::with_capacity(rows);
    let mut pos = from;
    let mut line = line_at(data, from);
    for _ in 0..rows {
        let (next, blank) = skip_blank(data, pos);
        pos = next;
        line += blank;
        lines.push(line);
        let n = decoder.decode(&data[pos..]).unwrap_or(data.len() - pos);
        let _ = decoder.flush();
        line += data[pos..pos + n].iter().filter(|&&c| c == b'\n').count() as u64;
        pos += n;
    }
    lines
}

/// The rows from byte `from` up to the first record that does not
/// decode on its own, that record's byte offset, and its error.
fn first_bad_record(
    data: &[u8],
    from: usize,
    schema: &SchemaRef,
    delimiter: u8,
) -> (Option<RecordBatch>, usize, ArrowError) {
    let mut decoder = csv_decoder(schema, delimiter, 1);
    let mut pos = from;
    let mut good = Vec::new();
    let done = |good: Vec<RecordBatch>, start: usize, e: ArrowError| {
        let batch = good
            .first()
            .and_then(|first| arrow::compute::concat_batches(&first.schema(), &good).ok());
        (batch, start, e)
    };
    loop {
        pos = skip_blank(data, pos).0;
        let start = pos;
        match decoder.decode(&data[pos..]) {
            Err(e) => return done(good, start, e),
            Ok(n) => {
                pos += n;
                match decoder.flush() {
                    Err(e) => return done(good, start, e),
                    Ok(None) => {
                        return done(good, start, ArrowError::CsvError("unexpected end of file".into()));
                    }
                    Ok(Some(batch)) => good.push(batch),
                }
            }
        }
    }
}

fn decode_json(data: &Bytes, file: &str, schema: &SchemaRef, out: &mut Vec<Lined>) -> Result<(), FileError> {
    let decoder = || {
        arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(BATCH_ROWS)
            .with_coerce_primitive(true)
            .build_decoder()
    };
    let decode = |bytes: &[u8]| -> Result<Option<RecordBatch>, ArrowError> {
        let mut d = decoder()?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = d.decode(rest)?;
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
        d.flush()
    };
    // Line numbers and byte ranges of the non-blank lines.
    let mut records: Vec<(u64, usize, usize)> = Vec::new();
    let mut start = 0;
    for (i, line) in data.split(|&c| c == b'\n').enumerate() {
        if line.iter().any(|c| !c.is_ascii_whitespace()) {
            records.push((i as u64 + 1, start, start + line.len()));
        }
        start += line.len() + 1;
    }
    for chunk in records.chunks(BATCH_ROWS) {
        let (from, to) = (chunk[0].1, chunk[chunk.len() - 1].2);
        match decode(&data[from..to]) {
            Ok(Some(batch)) if batch.num_rows() == chunk.len() => {
                out.push((batch, Lines::Listed(chunk.iter().map(|r| r.0).collect())));
            }
            _ => {
                // Decode line by line to find the one at fault, keeping
                // the good lines before it.
                for (k, (line, a, b)) in chunk.iter().enumerate() {
                    let rows = decode(&data[*a..*b]);
                    let bad = match rows {
                        Ok(Some(batch)) if batch.num_rows() == 1 => None,
                        Ok(_) => Some("not one JSON object".to_string()),
                        Err(e) => Some(arrow_message(&e)),
                    };
                    if let Some(message) = bad {
                        if k > 0
                            && let Ok(Some(batch)) = decode(&data[chunk[0].1..chunk[k - 1].2])
                        {
                            out.push((batch, Lines::Listed(chunk[..k].iter().map(|r| r.0).collect())));
                        }
                        return Err(FileError::Malformed {
                            file: file.to_string(),
                            line: Some(*line),
                            message,
                        });
                    }
                }
                return Err(FileError::Malformed {
                    file: file.to_string(),
                    line: None,
                    message: "cannot decode".into(),
                });
            }
        }
    }
    Ok(())
}

/// An Arrow error's text without the crate's prefixes and its own
/// (record-relative) line numbers.
fn arrow_message(e: &ArrowError) -> String {
    let text = match e {
        ArrowError::CsvError(s)
        | ArrowError::JsonError(s)
        | ArrowError::ParseError(s)
        | ArrowError::CastError(s)
        | ArrowError::InvalidArgumentError(s)
        | ArrowError::SchemaError(s) => s.clone(),
        other => other.to_string(),
    };
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match (text.find(" for line "), text.find(", expected")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &text[..a], &text[b..]),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"d/*.csv", b"d/a.csv"));
        assert!(!glob_match(b"d/*.csv", b"d/e/a.csv"));
        assert!(glob_match(b"d/**/*.csv", b"d/e/f/a.csv"));
        assert!(glob_match(b"d/**/*.csv", b"d/a.csv"));
        assert!(glob_match(b"d/?.csv", b"d/a.csv"));
        assert!(!glob_match(b"d/?.csv", b"d/ab.csv"));
    }

    fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn csv_error_names_the_line() {
        let s = schema(&[("a", DataType::Int64, false), ("b", DataType::Utf8, true)]);
        let data = Bytes::from("a,b\n1,x\n2,\"multi\nline\"\n\nzz,y\n4,w\n");
        let format = Format::Csv {
            header: true,
            delimiter: b',',
        };
        let d = decode(&format, &data, "f.csv", &s, &[], 0);
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let e = d.error.unwrap().to_string();
        assert!(e.starts_with("f.csv line 6: "), "{e}");
        let d = decode(&format, &Bytes::from("a,b\n1,x\n,y\n"), "f.csv", &s, &[], 0);
        assert_eq!(
            d.error.unwrap().to_string(),
            "f.csv line 3: null value in column \"a\" violates not-null constraint"
        );
        let d = decode(&format, &Bytes::from("a,b\n1,x\n2\n"), "f.csv", &s, &[], 0);
        assert!(
            d.error
                .unwrap()
                .to_string()
                .starts_with("f.csv line 3: incorrect number of fields")
        );
        let d = decode(&format, &Bytes::from("a,b\n1,x\n2,y\n3,z"), "f.csv", &s, &[], 1);
        assert!(d.error.is_none());
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[test]
    fn json_error_names_the_line() {
        let s = schema(&[("a", DataType::Int64, true), ("b", DataType::Utf8, true)]);
        let data = Bytes::from("{\"a\": 1, \"b\": \"x\"}\n\n{\"b\": \"y\", \"a\": 2}\n{\"a\": \n");
        let d = decode(&Format::Json, &data, "f.json", &s, &[], 0);
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert!(d.error.unwrap().to_string().starts_with("f.json line 4: "));
    }
}
