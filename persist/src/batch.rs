//! Batch objects: a shard's updates as one Arrow IPC file, the row columns
//! followed by a `diff` column; and consolidation, which sums the diffs of
//! equal rows and drops the rows whose sum is zero.
//!
//! This module owns the object format. It never talks to the store.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::writer::FileWriter;
use arrow::ipc::{Block, root_as_footer};
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use rustc_hash::FxHashMap;

/// The name of the diff column every batch object ends with.
pub const DIFF: &str = "_weir_diff";

/// The schema of a batch object holding rows of `rows`.
pub fn object_schema(rows: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = rows.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DIFF, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Rows with their multiplicities: `batch` holds the row columns,
/// `diffs[i]` is how many copies of row `i` are added (or removed, when
/// negative).
#[derive(Debug, Clone)]
pub struct Updates {
    pub batch: RecordBatch,
    pub diffs: Vec<i64>,
}

impl Updates {
    /// Every row of `batch` with the same diff.
    pub fn uniform(batch: RecordBatch, diff: i64) -> Updates {
        let diffs = vec![diff; batch.num_rows()];
        Updates { batch, diffs }
    }

    pub fn len(&self) -> usize {
        self.diffs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.diffs.is_empty()
    }
}

/// Encode updates as an Arrow IPC file.
pub fn encode(updates: &Updates) -> Result<Bytes, String> {
    let mut out = Vec::new();
    encode_to(std::slice::from_ref(updates), &mut out).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// Encode `parts` (never empty, all of one schema) into `out` as one IPC
/// file, each part a record batch of its own: nothing is concatenated.
pub fn encode_to(parts: &[Updates], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let other = |e: arrow::error::ArrowError| std::io::Error::other(e.to_string());
    let first = parts.first().ok_or_else(|| std::io::Error::other("no updates"))?;
    let schema = object_schema(first.batch.schema().as_ref());
    let mut w = FileWriter::try_new(out, &schema).map_err(other)?;
    for updates in parts {
        let mut columns: Vec<ArrayRef> = updates.batch.columns().to_vec();
        columns.push(Arc::new(Int64Array::from(updates.diffs.clone())));
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(other)?;
        w.write(&batch).map_err(other)?;
    }
    w.finish().map_err(other)
}

/// How many of `parts`' updates delete.
pub fn deletes(parts: &[Updates]) -> u64 {
    parts
        .iter()
        .map(|p| p.diffs.iter().filter(|d| **d < 0).count() as u64)
        .sum()
}

/// [`consolidate`], except that parts without a deletion among them are
/// left as they are (equal rows apart mean the same as one row counted
/// twice), so that nothing is copied.
pub fn consolidate_parts(schema: &SchemaRef, parts: Vec<Updates>) -> Result<Vec<Updates>, String> {
    if parts.iter().all(|p| p.diffs.iter().all(|d| *d > 0)) {
        // Each part as rows of `schema` (its names and nullability), as
        // concatenating them would make it.
        return parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                let batch = RecordBatch::try_new(schema.clone(), p.batch.columns().to_vec())
                    .map_err(|e| e.to_string())?;
                Ok(Updates {
                    batch,
                    diffs: p.diffs,
                })
            })
            .collect();
    }
    let merged = consolidate(schema, &parts)?;
    Ok(if merged.is_empty() { vec![] } else { vec![merged] })
}

/// Decode an object written by [`encode`]; the error says what is wrong.
pub fn decode(bytes: Bytes) -> Result<Updates, String> {
    let parts = decode_parts(bytes)?;
    match parts.len() {
        1 => Ok(parts.into_iter().next().expect("one part")),
        _ => {
            let schema = parts.first().map(|p| p.batch.schema()).ok_or("no record batch")?;
            concat(&schema, &parts)
        }
    }
}

/// [`decode`], each record batch of the object a part of its own.
pub fn decode_parts(bytes: Bytes) -> Result<Vec<Updates>, String> {
    // Decoded in place: the arrays are slices of the object's bytes (copied
    // only where misaligned), where a `FileReader` would copy each record
    // batch into a freshly zeroed buffer first.
    let buffer = Buffer::from(bytes);
    let trailer = buffer
        .len()
        .checked_sub(10)
        .ok_or("shorter than an Arrow file's trailer")?;
    let footer_len = read_footer_length(buffer[trailer..].try_into().map_err(|_| "no trailer")?)
        .map_err(|e| e.to_string())?;
    let footer_start = trailer
        .checked_sub(footer_len)
        .ok_or("the footer overruns the file")?;
    let footer = root_as_footer(&buffer[footer_start..trailer]).map_err(|e| e.to_string())?;
    let schema = Arc::new(fb_to_schema(footer.schema().ok_or("no schema in the footer")?));
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    let block_data = |block: &Block| {
        let start = block.offset() as usize;
        let len = block.metaDataLength() as usize + block.bodyLength() as usize;
        (start.checked_add(len).is_some_and(|end| end <= buffer.len()))
            .then(|| buffer.slice_with_length(start, len))
            .ok_or_else(|| "a block overruns the file".to_string())
    };
    for block in footer.dictionaries().iter().flatten() {
        decoder
            .read_dictionary(block, &block_data(block)?)
            .map_err(|e| e.to_string())?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        if let Some(batch) = decoder
            .read_record_batch(block, &block_data(block)?)
            .map_err(|e| e.to_string())?
        {
            batches.push(batch);
        }
    }
    let Some((last, rows)) = schema.fields().split_last() else {
        return Err("no columns".into());
    };
    if last.name() != DIFF || last.data_type() != &DataType::Int64 {
        return Err(format!("the last column is not {DIFF} bigint"));
    }
    let row_schema = Arc::new(Schema::new(rows.to_vec()));
    let mut parts = Vec::new();
    for batch in batches {
        let n = batch.num_columns() - 1;
        let diffs = batch
            .column(n)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or("the diff column is not bigint")?;
        if diffs.null_count() > 0 {
            return Err("the diff column has NULLs".into());
        }
        let diffs = diffs.values().to_vec();
        let batch = RecordBatch::try_new(row_schema.clone(), batch.columns()[..n].to_vec())
            .map_err(|e| e.to_string())?;
        parts.push(Updates { batch, diffs });
    }
    if parts.is_empty() {
        // An object of no record batch holds no rows.
        parts.push(Updates {
            batch: RecordBatch::new_empty(row_schema),
            diffs: Vec::new(),
        });
    }
    Ok(parts)
}

/// `parts` (all of `schema`) one after another, as one batch.
pub fn concat(schema: &SchemaRef, parts: &[Updates]) -> Result<Updates, String> {
    let batches: Vec<RecordBatch> = parts.iter().map(|p| p.batch.clone()).collect();
    let batch = arrow::compute::concat_batches(schema, &batches).map_err(|e| e.to_string())?;
    let diffs = parts.iter().flat_map(|p| p.diffs.iter().copied()).collect();
    Ok(Updates { batch, diffs })
}

/// Sum the diffs of equal rows across `parts` (all of `schema`) and drop
/// the rows whose sum is zero.
///
/// Only a row that appears somewhere with a negative diff can cancel:
/// those (few, in a table's compaction: the deletions) are summed through
/// a hash table, and every other row passes through as it is, so equal
/// positive rows may stay separate, which means the same. Where the first
/// column is an integer (a table's key, typically), rows whose first value
/// no such row has are passed through without being encoded at all: a
/// table's large initial batch costs a scan of one column. Without a
/// negative diff the parts are concatenated.
pub fn consolidate(schema: &SchemaRef, parts: &[Updates]) -> Result<Updates, String> {
    let err = |e: arrow::error::ArrowError| e.to_string();
    let negatives: Vec<Vec<u32>> = parts
        .iter()
        .map(|p| {
            (0..p.diffs.len() as u32)
                .filter(|i| p.diffs[*i as usize] < 0)
                .collect()
        })
        .collect();
    if negatives.iter().all(Vec::is_empty) {
        return concat(schema, parts);
    }
    let converter = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(err)?;
    let encode = |part: &Updates, rows: &[u32]| {
        let indices = arrow::array::UInt32Array::from(rows.to_vec());
        let columns = part
            .batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()?;
        converter.convert_columns(&columns)
    };
    let negative_rows = parts
        .iter()
        .zip(&negatives)
        .map(|(part, rows)| encode(part, rows))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    // Each row that can cancel: where it was first seen, and its sum.
    // Rows come from our own store: a keyed (DoS-resistant) hash buys
    // nothing here.
    let count = negatives.iter().map(Vec::len).sum();
    let mut candidates: FxHashMap<&[u8], usize> =
        FxHashMap::with_capacity_and_hasher(count, Default::default());
    let mut sums: Vec<((usize, usize), i64)> = Vec::with_capacity(count);
    for (p, rows) in negative_rows.iter().enumerate() {
        for (j, row) in rows.iter().enumerate() {
            candidates.entry(row.data()).or_insert_with(|| {
                sums.push(((p, negatives[p][j] as usize), 0));
                sums.len() - 1
            });
        }
    }
    let firsts = first_values(parts, &negatives);
    let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(parts.len() + 1); schema.fields().len()];
    let mut diffs = Vec::new();
    for part in parts {
        let n = part.diffs.len();
        let maybe: Vec<u32> = match (&firsts, part.batch.columns().first()) {
            (Some(values), Some(first)) => (0..n as u32)
                .filter(|i| first_value(first, *i as usize).is_some_and(|v| values.contains(&v)))
                .collect(),
            _ => (0..n as u32).collect(),
        };
        let encoded = encode(part, &maybe).map_err(err)?;
        let mut keep = vec![true; n];
        for (j, row) in encoded.iter().enumerate() {
            if let Some(c) = candidates.get(row.data()) {
                let i = maybe[j] as usize;
                sums[*c].1 += part.diffs[i];
                keep[i] = false;
            }
        }
        diffs.extend((0..n).filter(|i| keep[*i]).map(|i| part.diffs[i]));
        let keep = arrow::array::BooleanArray::from(keep);
        for (c, column) in part.batch.columns().iter().enumerate() {
            columns[c].push(arrow::compute::filter(column, &keep).map_err(err)?);
        }
    }
    let (indices, summed): (Vec<(usize, usize)>, Vec<i64>) =
        sums.into_iter().filter(|(_, d)| *d != 0).unzip();
    diffs.extend(summed);
    for (c, out) in columns.iter_mut().enumerate() {
        let arrays: Vec<&dyn Array> = parts.iter().map(|u| u.batch.column(c).as_ref()).collect();
        out.push(arrow::compute::interleave(&arrays, &indices).map_err(err)?);
    }
    let columns = columns
        .into_iter()
        .map(|arrays| {
            let arrays: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&arrays)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(diffs.len())),
    )
    .map_err(err)?;
    Ok(Updates { batch, diffs })
}

/// Row `i`'s first-column value, for an integer column that has one.
fn first_value(column: &ArrayRef, i: usize) -> Option<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    if column.is_null(i) {
        return None;
    }
    match column.data_type() {
        DataType::Int64 => Some(column.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Some(i64::from(column.as_primitive::<Int32Type>().value(i))),
        _ => None,
    }
}

/// The first-column values of the rows that can cancel, when the first
/// column is an integer and none of them is NULL there; `None` otherwise
/// (every row is then a candidate).
fn first_values(parts: &[Updates], negatives: &[Vec<u32>]) -> Option<rustc_hash::FxHashSet<i64>> {
    let mut values = rustc_hash::FxHashSet::default();
    for (part, rows) in parts.iter().zip(negatives) {
        let first = part.batch.columns().first()?;
        for i in rows {
            values.insert(first_value(first, *i as usize)?);
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn rows(ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_consolidate() {
        let a = Updates::uniform(rows(&[1, 2, 2], &[Some("a"), None, None]), 1);
        let b = Updates::uniform(rows(&[1, 3], &[Some("a"), Some("c")]), -1);
        let a2 = decode(encode(&a).unwrap()).unwrap();
        assert_eq!(a2.batch, a.batch);
        assert_eq!(a2.diffs, a.diffs);
        let c = consolidate(&a.batch.schema(), &[a2, b]).unwrap();
        // 1 cancels, 2 twice (as it was), 3 removed once more than added.
        assert_eq!(c.batch, rows(&[2, 2, 3], &[None, None, Some("c")]));
        assert_eq!(c.diffs, vec![1, 1, -1]);
        // A row added in several parts and removed in a later one sums
        // over all of them.
        let parts = [
            Updates::uniform(rows(&[5, 6], &[Some("x"), None]), 1),
            Updates::uniform(rows(&[5], &[Some("x")]), 2),
            Updates::uniform(rows(&[5, 7], &[Some("x"), Some("y")]), -1),
        ];
        let c = consolidate(&a.batch.schema(), &parts).unwrap();
        assert_eq!(c.batch, rows(&[6, 5, 7], &[None, Some("x"), Some("y")]));
        assert_eq!(c.diffs, vec![1, 2, -1]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(Bytes::from_static(b"not arrow")).is_err());
        // Cut short, or with a footer or a block said to be longer than
        // the object: an error, never a panic or a read past the end.
        let whole = encode(&Updates::uniform(rows(&[1, 2], &[Some("a"), None]), 1)).unwrap();
        for cut in [1, 10, whole.len() / 2] {
            assert!(decode(whole.slice(..whole.len() - cut)).is_err(), "cut {cut}");
        }
        let mut long_footer = whole.to_vec();
        let at = long_footer.len() - 10;
        long_footer[at..at + 4].copy_from_slice(&(i32::MAX).to_le_bytes());
        assert!(decode(Bytes::from(long_footer)).is_err());
        // Bytes inserted near the start: the footer's blocks no longer
        // point at messages.
        let mut shifted = whole.to_vec();
        shifted.splice(8..8, std::iter::repeat_n(0u8, 64));
        assert!(decode(Bytes::from(shifted)).is_err());
    }
}
