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
use futures::FutureExt;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

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

    /// The schema of `file` in `format`: Parquet's from its footer, CSV's
    /// and JSON's inferred from the records in its first piece.
    pub async fn infer_schema(&self, file: &FileRef, format: &Format) -> Result<SchemaRef, FileError> {
        if let Format::Parquet = format {
            let builder = ParquetRecordBatchStreamBuilder::new(self.parquet(file))
                .await
                .map_err(|e| parquet_error(&file.url, e))?;
            return Ok(builder.schema().clone());
        }
        let end = file.size.min(PIECE_BYTES as u64);
        let data = self.store.get_range(&file.location, 0..end).await?;
        // A piece may end inside a record: infer from the whole lines.
        let data = match data.iter().rposition(|&c| c == b'\n') {
            Some(i) if end < file.size => data.slice(..=i),
            _ => data,
        };
        infer_schema(format, &data, &file.url)
    }

    /// A reader of `file`'s rows as batches of `schema` (columns keeping
    /// `rules`), after its first `skip` rows, a piece at a time.
    pub async fn reader(
        &self,
        file: &FileRef,
        format: &Format,
        schema: SchemaRef,
        rules: Vec<Rule>,
        skip: u64,
    ) -> Result<FileReader, FileError> {
        let body = match format {
            Format::Parquet => {
                let stream = ParquetRecordBatchStreamBuilder::new(self.parquet(file))
                    .await
                    .map(|b| b.with_batch_size(BATCH_ROWS).with_offset(skip as usize))
                    .and_then(|b| b.build())
                    .map_err(|e| parquet_error(&file.url, e))?;
                Body::Parquet(stream)
            }
            Format::Csv { .. } | Format::Json => Body::Text {
                store: self.store.clone(),
                location: file.location.clone(),
                size: file.size,
                read: 0,
                buf: Vec::new(),
                line: 1,
            },
        };
        Ok(FileReader {
            url: file.url.clone(),
            format: format.clone(),
            schema,
            rules: rules.into(),
            skip: if matches!(format, Format::Parquet) {
                0
            } else {
                skip
            },
            body,
            piece_bytes: PIECE_BYTES,
            over: false,
        })
    }

    fn parquet(&self, file: &FileRef) -> ParquetFile {
        ParquetFile {
            store: self.store.clone(),
            location: file.location.clone(),
            size: file.size,
        }
    }
}

/// A Parquet file in an object store, read by byte ranges (its footer,
/// then a row group's column chunks).
struct ParquetFile {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
}

impl AsyncFileReader for ParquetFile {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.location, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Bytes of a CSV or JSON file read per piece; a piece's rows end at the
/// last whole record in it, the rest starts the next piece.
const PIECE_BYTES: usize = 8 << 20;

/// One file's rows, read and decoded a piece at a time, so a file of any
/// size takes memory for a few pieces only.
pub struct FileReader {
    url: String,
    format: Format,
    schema: SchemaRef,
    rules: Arc<[Rule]>,
    /// Rows still to pass over (ingested before a restart).
    skip: u64,
    body: Body,
    piece_bytes: usize,
    /// The file is read to its end, or to an error.
    over: bool,
}

enum Body {
    /// Parquet: a row group per piece.
    Parquet(ParquetRecordBatchStream<ParquetFile>),
    /// CSV and JSON: byte ranges, cut at record boundaries.
    Text {
        store: Arc<dyn ObjectStore>,
        location: Path,
        size: u64,
        /// Bytes fetched so far.
        read: u64,
        /// Fetched bytes not yet decoded; they start at a record.
        buf: Vec<u8>,
        /// The line `buf` starts on.
        line: u64,
    },
}

impl FileReader {
    /// Read pieces of at most about `bytes` (CSV and JSON; for tests).
    pub fn with_piece_bytes(mut self, bytes: usize) -> FileReader {
        self.piece_bytes = bytes.max(1);
        self
    }

    /// The next piece's rows and, if one ended the file there, the error;
    /// `None` once the file is over. Decoding runs on a blocking thread.
    pub async fn next(&mut self) -> Option<Decoded> {
        if self.over {
            return None;
        }
        let decoded = match self.next_piece().await {
            Ok(Some(d)) => d,
            Ok(None) => {
                self.over = true;
                return None;
            }
            Err(e) => Decoded {
                batches: Vec::new(),
                error: Some(e),
                skipped: 0,
            },
        };
        self.skip -= decoded.skipped.min(self.skip);
        self.over |= decoded.error.is_some();
        Some(decoded)
    }

    async fn next_piece(&mut self) -> Result<Option<Decoded>, FileError> {
        let (schema, rules, url, skip) = (
            self.schema.clone(),
            self.rules.clone(),
            self.url.clone(),
            self.skip,
        );
        let file = url.clone();
        let blocking = |f: Box<dyn FnOnce() -> Decoded + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| FileError::Malformed {
                    file,
                    line: None,
                    message: e.to_string(),
                })
        };
        match &mut self.body {
            Body::Parquet(stream) => {
                let Some(group) = stream
                    .next_row_group()
                    .await
                    .map_err(|e| parquet_error(&url, e))?
                else {
                    return Ok(None);
                };
                let decoded = blocking(Box::new(move || {
                    let mut lined = Vec::new();
                    let raw = parquet_batches(group, &url, &mut lined);
                    settle(lined, raw, &[], &url, &schema, &schema, &rules, 0, 1)
                }))
                .await?;
                Ok(Some(decoded))
            }
            Body::Text {
                store,
                location,
                size,
                read,
                buf,
                line,
            } => {
                // Fetch until the buffer holds a whole record past a piece's
                // worth, or the file's end.
                let cut = loop {
                    let end = *read == *size;
                    if end || buf.len() >= self.piece_bytes {
                        let cut = match self.format {
                            Format::Csv { .. } => last_csv_record_end(buf),
                            _ => buf.iter().rposition(|&c| c == b'\n').map(|i| i + 1),
                        };
                        match cut {
                            _ if end => break buf.len(),
                            Some(cut) => break cut,
                            None => {}
                        }
                    }
                    let to = (*read + self.piece_bytes as u64).min(*size);
                    buf.extend_from_slice(&store.get_range(location, *read..to).await?);
                    *read = to;
                };
                if cut == 0 {
                    return Ok(None);
                }
                let data = Bytes::from(buf.drain(..cut).collect::<Vec<u8>>());
                let first = *line;
                *line += data.iter().filter(|&&c| c == b'\n').count() as u64;
                // Only the file's first piece has the header line.
                let format = match self.format {
                    Format::Csv { header, delimiter } => Format::Csv {
                        header: header && first == 1,
                        delimiter,
                    },
                    ref f => f.clone(),
                };
                let decoded = blocking(Box::new(move || {
                    decode(&format, &data, &url, &schema, &rules, skip, first)
                }))
                .await?;
                Ok(Some(decoded))
            }
        }
    }
}

/// The end of `data`'s last whole CSV record (just past its line break),
/// `data` starting at a record: a line break outside quotes. Quotes come
/// in pairs within a quoted field (`""` escapes one), so the count's
/// parity says whether a line break is inside one.
fn last_csv_record_end(data: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut last = None;
    for (i, &c) in data.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => last = Some(i + 1),
            _ => {}
        }
    }
    last
}

fn parquet_error(file: &str, e: ParquetError) -> FileError {
    match e {
        ParquetError::External(e) => match e.downcast::<object_store::Error>() {
            Ok(e) => FileError::Store(*e),
            Err(e) => FileError::Malformed {
                file: file.to_string(),
                line: None,
                message: e.to_string(),
            },
        },
        e => FileError::Malformed {
            file: file.to_string(),
            line: None,
            message: e.to_string(),
        },
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

/// What decoding a file (or a piece of one) gave: its rows after the
/// first `skip`, in batches of `schema`, up to the first malformed row,
/// and the error that stopped it (if one did).
#[derive(Default)]
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    pub error: Option<FileError>,
    /// Good rows passed over (of the `skip` asked for).
    pub skipped: u64,
}

/// What a table's column demands of a value beyond its type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    pub not_null: bool,
    /// `varchar(n)`: at most this many characters.
    pub max_chars: Option<u64>,
}

/// Decode `data` (of file `file`, starting on its line `first_line`)
/// into batches of `schema`, whose columns keep `rules` (one per
/// column), skipping the first `skip` rows (already ingested).
pub fn decode(
    format: &Format,
    data: &Bytes,
    file: &str,
    schema: &SchemaRef,
    rules: &[Rule],
    skip: u64,
    first_line: u64,
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
    settle(
        batches,
        raw,
        data,
        file,
        schema,
        &read_schema,
        rules,
        skip,
        first_line,
    )
}

/// Decoded batches conformed to `schema` and `rules`, up to the first
/// row that does not; `data` is what CSV batches' offsets point into, and
/// its lines (and `raw`'s) count from `first_line`.
#[allow(clippy::too_many_arguments)]
fn settle(
    batches: Vec<Lined>,
    raw: Result<(), FileError>,
    data: &[u8],
    file: &str,
    schema: &SchemaRef,
    read_schema: &SchemaRef,
    rules: &[Rule],
    skip: u64,
    first_line: u64,
) -> Decoded {
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
                        record_lines(data, *from, at + 1, read_schema, *delimiter)
                            .last()
                            .copied()
                    }
                },
                message,
            });
            break;
        }
    }
    if let Some(FileError::Malformed { line: Some(line), .. }) = &mut error {
        *line += first_line - 1;
    }
    Decoded {
        batches: out,
        error,
        skipped: row.min(skip),
    }
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
    parquet_batches(reader, file, out)
}

/// The batches `reader` decodes (of Parquet file `file`), up to the first
/// that fails.
fn parquet_batches(
    reader: impl Iterator<Item = Result<RecordBatch, ArrowError>>,
    file: &str,
    out: &mut Vec<Lined>,
) -> Result<(), FileError> {
    for batch in reader {
        let batch = batch.map_err(|e| FileError::Malformed {
            file: file.to_string(),
            line: None,
            message: arrow_message(&e),
        })?;
        out.push((batch, Lines::Unknown));
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
        let d = decode(&format, &data, "f.csv", &s, &[], 0, 1);
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let e = d.error.unwrap().to_string();
        assert!(e.starts_with("f.csv line 6: "), "{e}");
        let d = decode(&format, &Bytes::from("a,b\n1,x\n,y\n"), "f.csv", &s, &[], 0, 1);
        assert_eq!(
            d.error.unwrap().to_string(),
            "f.csv line 3: null value in column \"a\" violates not-null constraint"
        );
        let d = decode(&format, &Bytes::from("a,b\n1,x\n2\n"), "f.csv", &s, &[], 0, 1);
        assert!(
            d.error
                .unwrap()
                .to_string()
                .starts_with("f.csv line 3: incorrect number of fields")
        );
        let d = decode(
            &format,
            &Bytes::from("a,b\n1,x\n2,y\n3,z"),
            "f.csv",
            &s,
            &[],
            1,
            1,
        );
        assert!(d.error.is_none());
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[test]
    fn json_error_names_the_line() {
        let s = schema(&[("a", DataType::Int64, true), ("b", DataType::Utf8, true)]);
        let data = Bytes::from("{\"a\": 1, \"b\": \"x\"}\n\n{\"b\": \"y\", \"a\": 2}\n{\"a\": \n");
        let d = decode(&Format::Json, &data, "f.json", &s, &[], 0, 1);
        assert_eq!(d.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert!(d.error.unwrap().to_string().starts_with("f.json line 4: "));
    }

    /// Every row and error a reader gives, its pieces put together.
    async fn read_all(
        url: &str,
        format: &Format,
        s: &SchemaRef,
        skip: u64,
        piece: usize,
    ) -> (RecordBatch, Option<String>) {
        let files = Files::open(url).unwrap();
        let file = files.list().await.unwrap().remove(0);
        let mut reader = files
            .reader(&file, format, s.clone(), Vec::new(), skip)
            .await
            .unwrap()
            .with_piece_bytes(piece);
        let (mut batches, mut error, mut pieces) = (Vec::new(), None, 0);
        while let Some(d) = reader.next().await {
            pieces += 1;
            batches.extend(d.batches);
            error = d.error.map(|e| e.to_string());
        }
        assert!(pieces > 3 || piece > 1000, "{pieces} pieces");
        (arrow::compute::concat_batches(s, &batches).unwrap(), error)
    }

    /// The same file read whole and in small pieces (records across
    /// piece ends, quoted line breaks, blank lines, a bad row at the end,
    /// a restart's skip) gives the same rows and the same error line.
    #[tokio::test]
    async fn pieces_read_like_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema(&[("a", DataType::Int64, false), ("b", DataType::Utf8, true)]);
        let mut csv = String::from("a,b\n");
        let mut json = String::new();
        for i in 0..400 {
            match i % 5 {
                0 => csv.push_str(&format!("{i},\"two\nlines, \"\"quoted\"\"\"\n")),
                1 => csv.push_str(&format!("\n{i},\n")),
                _ => csv.push_str(&format!("{i},word{i}\n")),
            }
            json.push_str(&format!("{{\"a\": {i}, \"b\": \"w{i}\"}}\n"));
            if i % 7 == 0 {
                json.push('\n');
            }
        }
        csv.push_str("zz,y\n401,x\n");
        json.push_str("{\"a\": \n{\"a\": 402}\n");
        let cases = [
            (
                "f.csv",
                csv,
                Format::Csv {
                    header: true,
                    delimiter: b',',
                },
            ),
            ("f.json", json, Format::Json),
        ];
        for (name, text, format) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &text).unwrap();
            let url = format!("file://{}", path.display());
            let data = Bytes::from(text);
            for skip in [0, 123] {
                let whole = decode(&format, &data, &url, &s, &[], skip, 1);
                let whole_rows = arrow::compute::concat_batches(&s, &whole.batches).unwrap();
                let whole_error = whole.error.map(|e| e.to_string());
                assert!(
                    whole_error.as_deref().unwrap().contains(" line "),
                    "{whole_error:?}"
                );
                for piece in [1, 37, 256] {
                    let (rows, error) = read_all(&url, &format, &s, skip, piece).await;
                    assert_eq!(rows, whole_rows, "{name} skip {skip} piece {piece}");
                    assert_eq!(error, whole_error, "{name} skip {skip} piece {piece}");
                }
            }
        }
    }

    /// Parquet is read a row group at a time, after a restart's skip.
    #[tokio::test]
    async fn parquet_by_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema(&[("a", DataType::Int64, false)]);
        let path = dir.path().join("f.parquet");
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            s.clone(),
            Some(props),
        )
        .unwrap();
        let values: Vec<i64> = (0..1000).collect();
        w.write(
            &RecordBatch::try_new(s.clone(), vec![Arc::new(arrow::array::Int64Array::from(values))]).unwrap(),
        )
        .unwrap();
        w.close().unwrap();
        let url = format!("file://{}", path.display());
        let files = Files::open(&url).unwrap();
        let file = files.list().await.unwrap().remove(0);
        assert_eq!(
            files
                .infer_schema(&file, &Format::Parquet)
                .await
                .unwrap()
                .field(0)
                .name(),
            "a"
        );
        let (rows, error) = read_all(&url, &Format::Parquet, &s, 250, 1).await;
        assert_eq!(error, None);
        let expected: Vec<i64> = (250..1000).collect();
        assert_eq!(
            rows.column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec(),
            expected
        );
    }
}
