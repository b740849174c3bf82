//! Rows as `arrow-row` encoded byte strings.
//!
//! The encoding's byte order is the SQL sort order, so arrangements compare
//! and hash plain bytes. The encoding of a row is the concatenation of its
//! columns' encodings, which lets joins concatenate a left and a right row
//! without decoding either.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{SortOptions, cast};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// An encoded row: held inline up to 24 bytes (a few integer or
/// timestamp columns: most keys, and most rows of narrow tables), so that
/// a row in flight between operators costs no allocation of its own; a
/// longer row is one heap allocation, as a `Vec<u8>` would be. It orders,
/// compares and hashes as its bytes.
#[derive(Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Row(smallvec::SmallVec<[u8; 24]>);

/// The byte order of two encoded rows, eight bytes at a time. Arranging
/// sorts and merges rows by this order, and most rows and keys are a few
/// dozen bytes: comparing them inline, rather than by a call to `memcmp`
/// that dispatches on length and alignment, was a tenth of a join's CPU.
#[inline]
pub fn compare_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    if n > 64 {
        return a.cmp(b);
    }
    let (mut x, mut y) = (&a[..n], &b[..n]);
    while x.len() >= 8 {
        let (p, q) = (word(&x[..8]), word(&y[..8]));
        if p != q {
            return p.cmp(&q);
        }
        x = &x[8..];
        y = &y[8..];
    }
    for (p, q) in x.iter().zip(y) {
        if p != q {
            return p.cmp(q);
        }
    }
    a.len().cmp(&b.len())
}

/// Whether two encoded rows hold the same bytes; as [`compare_bytes`].
#[inline]
pub fn equal_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 64 {
        return a == b;
    }
    let (mut x, mut y) = (a, b);
    while x.len() >= 8 {
        if word(&x[..8]) != word(&y[..8]) {
            return false;
        }
        x = &x[8..];
        y = &y[8..];
    }
    x == y
}

/// Eight bytes as a number that orders as they do.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("eight bytes"))
}

impl PartialEq for Row {
    #[inline]
    fn eq(&self, other: &Row) -> bool {
        equal_bytes(&self.0, &other.0)
    }
}

impl Eq for Row {}

/// As its bytes, as `SmallVec`'s own hash does: equal rows hash equally.
impl std::hash::Hash for Row {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state)
    }
}

impl PartialOrd for Row {
    #[inline]
    fn partial_cmp(&self, other: &Row) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Row {
    #[inline]
    fn cmp(&self, other: &Row) -> std::cmp::Ordering {
        compare_bytes(&self.0, &other.0)
    }
}

/// By hand: `SmallVec`'s own `Clone` collects an iterator, a byte at a
/// time (it cannot know its items are `Copy`), where a row is copied
/// with one `memcpy`. Rows are cloned wherever an operator keeps the row
/// it was given and passes it on.
impl Clone for Row {
    fn clone(&self) -> Row {
        Row(smallvec::SmallVec::from_slice(&self.0))
    }

    fn clone_from(&mut self, source: &Row) {
        self.0.clear();
        self.0.extend_from_slice(&source.0);
    }
}

impl Row {
    pub fn new() -> Self {
        Row::default()
    }

    /// An empty row with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Row(smallvec::SmallVec::with_capacity(bytes))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The concatenation of two encoded rows: a row of both schemas.
    pub fn concat(a: &[u8], b: &[u8]) -> Row {
        let mut row = smallvec::SmallVec::with_capacity(a.len() + b.len());
        row.extend_from_slice(a);
        row.extend_from_slice(b);
        Row(row)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// The bytes it keeps on the heap (none while inline).
    pub fn heap_capacity(&self) -> usize {
        if self.0.spilled() { self.0.capacity() } else { 0 }
    }
}

impl From<&[u8]> for Row {
    fn from(bytes: &[u8]) -> Row {
        Row(smallvec::SmallVec::from_slice(bytes))
    }
}

impl std::ops::Deref for Row {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<Row> for [u8] {
    #[inline]
    fn eq(&self, other: &Row) -> bool {
        equal_bytes(self, other.as_slice())
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Encodes columns of one schema into rows and back.
pub struct RowCodec {
    schema: SchemaRef,
    options: Vec<SortOptions>,
    converter: RowConverter,
}

impl RowCodec {
    pub fn new(schema: SchemaRef) -> Result<Self, EngineError> {
        let options = vec![SortOptions::default(); schema.fields().len()];
        Self::with_options(schema, options)
    }

    /// A codec whose byte order is the given per-column sort order (for
    /// `ORDER BY ... DESC NULLS LAST` and friends).
    pub fn with_options(schema: SchemaRef, options: Vec<SortOptions>) -> Result<Self, EngineError> {
        let fields = schema
            .fields()
            .iter()
            .zip(&options)
            .map(|(f, o)| SortField::new_with_options(f.data_type().clone(), *o))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| EngineError::Encoding(e.to_string()))?;
        Ok(RowCodec {
            schema,
            options,
            converter,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// How to find each column in this codec's rows without decoding them;
    /// `None` for a schema with a column whose encoding is not walked.
    pub fn layout(&self) -> Option<crate::spans::Layout> {
        crate::spans::Layout::of(&self.schema, &self.options)
    }

    /// An independent codec with the same layout (converters keep state,
    /// so each operator gets its own).
    pub fn duplicate(&self) -> Self {
        Self::with_options(self.schema.clone(), self.options.clone())
            .expect("this layout was accepted before")
    }

    /// Encode `num_rows` rows given as columns (cast to this schema's types
    /// where they differ).
    pub fn encode(&self, columns: &[ArrayRef], num_rows: usize) -> Result<Vec<Row>, EngineError> {
        if self.schema.fields().is_empty() {
            return Ok(vec![Row::new(); num_rows]);
        }
        let columns = self.conform(columns)?;
        let rows = self
            .converter
            .convert_columns(&columns)
            .map_err(|e| EngineError::Encoding(e.to_string()))?;
        Ok(rows.iter().map(|r| Row::from(r.as_ref())).collect())
    }

    /// Encode rows given as columns into one buffer (no allocation per
    /// row); `None` for a schema without columns, whose rows are all the
    /// empty row.
    pub fn encode_rows(&self, columns: &[ArrayRef]) -> Result<Option<arrow::row::Rows>, EngineError> {
        if self.schema.fields().is_empty() {
            return Ok(None);
        }
        let columns = self.conform(columns)?;
        self.converter
            .convert_columns(&columns)
            .map(Some)
            .map_err(|e| EngineError::Encoding(e.to_string()))
    }

    /// `columns` cast to this schema's types where they differ.
    pub fn conform(&self, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>, EngineError> {
        columns
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type()).map_err(|e| EngineError::Encoding(e.to_string()))
                }
            })
            .collect()
    }

    /// Decode rows into a batch of this schema.
    pub fn decode<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch, EngineError> {
        let n = rows.len();
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        if self.schema.fields().is_empty() {
            return RecordBatch::try_new_with_options(self.schema.clone(), vec![], &options)
                .map_err(|e| EngineError::Encoding(e.to_string()));
        }
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(rows.map(|r| parser.parse(r)))
            .map_err(|e| EngineError::Encoding(e.to_string()))?;
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(|e| EngineError::Encoding(e.to_string()))
    }

    /// One row of all NULLs (for the missing side of an outer join).
    pub fn null_row(&self) -> Result<Row, EngineError> {
        let columns: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        Ok(self.encode(&columns, 1)?.remove(0))
    }
}

/// Build a codec over an Arrow schema, wrapping the schema in an `Arc`.
pub fn codec(schema: &arrow::datatypes::Schema) -> Result<RowCodec, EngineError> {
    RowCodec::new(Arc::new(schema.clone()))
}

/// The rows of one arrangement batch in one byte buffer: row `i` is
/// `bytes[end(i - 1)..end(i)]`. A row costs its bytes plus a 4-byte end
/// offset (while the batch stays under 4 GiB), where a `Vec<Row>` costs an
/// allocation and a 24-byte header per row.
pub struct RowContainer {
    bytes: Vec<u8>,
    ends: differential_dataflow::trace::implementations::OffsetList,
}

impl RowContainer {
    fn end(&self, index: usize) -> usize {
        self.ends.index(index)
    }

    /// Room for `rows` rows of `bytes` bytes in all.
    pub fn with_capacities(rows: usize, bytes: usize) -> Self {
        RowContainer {
            bytes: Vec::with_capacity(bytes),
            ends: differential_dataflow::trace::implementations::OffsetList::with_capacity(rows),
        }
    }

    /// The row bytes held and allocated (the end offsets aside).
    pub(crate) fn bytes_in_use(&self) -> (usize, usize) {
        (self.bytes.len(), self.bytes.capacity())
    }

    pub(crate) fn ends(&self) -> &differential_dataflow::trace::implementations::OffsetList {
        &self.ends
    }

    /// Its rows, first to last.
    pub(crate) fn rows(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone + '_ {
        use differential_dataflow::trace::implementations::BatchContainer;
        (0..self.len()).map(|i| self.index(i))
    }
}

impl Default for RowContainer {
    fn default() -> Self {
        <Self as differential_dataflow::trace::implementations::BatchContainer>::with_capacity(0)
    }
}

impl differential_dataflow::trace::implementations::BatchContainer for RowContainer {
    type Owned = Row;
    type ReadItem<'a> = &'a [u8];

    fn into_owned(item: &[u8]) -> Row {
        Row::from(item)
    }

    fn clone_onto(item: &[u8], other: &mut Row) {
        other.clear();
        other.extend_from_slice(item);
    }

    fn push_ref(&mut self, item: &[u8]) {
        self.bytes.extend_from_slice(item);
        self.ends.push(self.bytes.len());
    }

    fn push_own(&mut self, item: &Row) {
        self.push_ref(item);
    }

    fn clear(&mut self) {
        *self = Self::with_capacity(0);
    }

    fn with_capacity(size: usize) -> Self {
        RowContainer {
            bytes: Vec::new(),
            ends: differential_dataflow::trace::implementations::OffsetList::with_capacity(size),
        }
    }

    fn merge_capacity(a: &Self, b: &Self) -> Self {
        RowContainer {
            bytes: Vec::with_capacity(a.bytes.len() + b.bytes.len()),
            ends: differential_dataflow::trace::implementations::OffsetList::with_capacity(
                a.ends.len() + b.ends.len(),
            ),
        }
    }

    fn reborrow<'b, 'a: 'b>(item: &'a [u8]) -> &'b [u8] {
        item
    }

    fn index(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.end(index - 1) };
        &self.bytes[start..self.end(index)]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

impl timely::container::PushInto<Row> for RowContainer {
    fn push_into(&mut self, item: Row) {
        use differential_dataflow::trace::implementations::BatchContainer;
        self.push_ref(&item);
    }
}

impl timely::container::PushInto<&Row> for RowContainer {
    fn push_into(&mut self, item: &Row) {
        use differential_dataflow::trace::implementations::BatchContainer;
        self.push_ref(item);
    }
}

impl<'a> timely::container::PushInto<&'a [u8]> for RowContainer {
    fn push_into(&mut self, item: &'a [u8]) {
        use differential_dataflow::trace::implementations::BatchContainer;
        self.push_ref(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn rows_compare_as_their_bytes() {
        // Byte strings of every length either side of a word and of the
        // inline-compare limit, differing at every position, plus prefixes.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for len in (0..20).chain(60..70) {
            let base: Vec<u8> = (0..len).map(|_| (next() % 4) as u8 * 85).collect();
            for at in 0..len {
                let mut other = base.clone();
                other[at] = (next() % 256) as u8;
                rows.push(other);
            }
            rows.push(base);
        }
        for a in &rows {
            for b in &rows {
                assert_eq!(compare_bytes(a, b), a.cmp(b), "{a:?} {b:?}");
                assert_eq!(equal_bytes(a, b), a == b, "{a:?} {b:?}");
                let (ra, rb) = (Row::from(&a[..]), Row::from(&b[..]));
                assert_eq!(ra.cmp(&rb), a.cmp(b));
                assert_eq!(*a.as_slice() == rb, a == b);
            }
        }
    }

    #[test]
    fn concatenated_rows_decode_as_the_joined_schema() {
        let left = codec(&Schema::new(vec![Field::new("a", DataType::Int64, true)])).unwrap();
        let right = codec(&Schema::new(vec![Field::new("b", DataType::Utf8, true)])).unwrap();
        let both = codec(&Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]))
        .unwrap();
        let l = left
            .encode(&[Arc::new(Int64Array::from(vec![Some(7), None]))], 2)
            .unwrap();
        let r = right
            .encode(&[Arc::new(StringArray::from(vec![Some("x"), None]))], 2)
            .unwrap();
        let joined: Vec<Row> = l.iter().zip(&r).map(|(a, b)| Row::concat(a, b)).collect();
        let batch = both.decode(joined.iter().map(|r| r.as_slice())).unwrap();
        let a = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let b = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(a.value(0), 7);
        assert_eq!(b.value(0), "x");
        assert!(a.is_null(1) && b.is_null(1));
    }
}
