//! The key indexes of user tables: what makes `PRIMARY KEY` and `UNIQUE`
//! hold (`23505`), kept by the coordinator under the write lock so that
//! each write is checked against every write queued before it.
//!
//! A table's primary-key index holds each row itself, in Arrow's row
//! format, so that a `DELETE` or `UPDATE` that pins the key can read its
//! rows here: it then neither waits for earlier writes to reach the
//! workers nor asks them for the rows. Other unique constraints hold only
//! their keys. Tables fed by a source have no indexes (their writes come
//! from upstream, already checked there).
//!
//! This module owns the indexes' contents and the uniqueness rule; which
//! statements may read rows from here is the sequencer's decision.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_sql::GlobalId;

use crate::catalog::Entry;
use crate::error::AdapterError;

type Result<T> = std::result::Result<T, AdapterError>;

fn internal(e: impl std::fmt::Display) -> AdapterError {
    AdapterError::Internal(e.to_string())
}

/// Refuse a table whose key columns (`keyed`, of `schema`) could not be
/// indexed: every column type Weir has can be, so this guards the
/// invariant [`KeyIndexes::create`] relies on.
pub(crate) fn indexable(schema: &arrow::datatypes::Schema, keyed: &[usize]) -> Result<()> {
    let fields: Vec<SortField> = (0..schema.fields().len())
        .map(|c| SortField::new(schema.field(c).data_type().clone()))
        .collect();
    if keyed.is_empty() || RowConverter::supports_fields(&fields) {
        return Ok(());
    }
    Err(AdapterError::Sql(weir_sql::SqlError::Unsupported(
        "a key on a table with columns of these types".into(),
    )))
}

/// Every user table's key indexes.
#[derive(Default)]
pub(crate) struct KeyIndexes {
    tables: HashMap<GlobalId, TableKeys>,
}

/// One table's indexes, in [`Entry::constraints`] order.
struct TableKeys {
    /// The primary key's, with the rows.
    rows: Option<RowsByKey>,
    /// Each other unique constraint's keys.
    unique: Vec<HashSet<Vec<u8>>>,
}

impl TableKeys {
    /// Where constraint `c` (in [`Entry::constraints`] order) sits in
    /// `unique`, when it is not the primary key with rows.
    fn unique_slot(&self, c: usize) -> usize {
        c - usize::from(self.rows.is_some())
    }
}

/// A table's rows by primary key. Each entry is one allocation: the key's
/// length (4 bytes) and then the row encoded with the key columns first,
/// so the encoded key is the row's prefix.
struct RowsByKey {
    /// Table columns in encoding order: the key's, then the rest.
    order: Vec<usize>,
    rows: RowConverter,
    hasher: hashbrown::DefaultHashBuilder,
    table: hashbrown::HashTable<Box<[u8]>>,
}

/// An entry of [`RowsByKey`]: the key's length, then the row (whose
/// prefix is the key).
fn stored(key: &[u8], row: &[u8]) -> Box<[u8]> {
    let mut stored = Vec::with_capacity(4 + row.len());
    stored.extend_from_slice(&(key.len() as u32).to_le_bytes());
    stored.extend_from_slice(row);
    stored.into_boxed_slice()
}

fn stored_key(stored: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(stored[..4].try_into().expect("4 bytes")) as usize;
    &stored[4..4 + len]
}

impl RowsByKey {
    fn new(entry: &Entry) -> Result<Self> {
        let mut order = entry.primary_key.clone();
        order.extend((0..entry.schema.fields().len()).filter(|c| !entry.primary_key.contains(c)));
        let fields = order
            .iter()
            .map(|c| SortField::new(entry.schema.field(*c).data_type().clone()))
            .collect();
        Ok(RowsByKey {
            order,
            rows: RowConverter::new(fields).map_err(internal)?,
            hasher: Default::default(),
            table: hashbrown::HashTable::new(),
        })
    }

    fn find(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |stored| stored_key(stored) == key)
            .map(|b| &b[..])
    }

    fn remove(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.table.find_entry(hash, |stored| stored_key(stored) == key) {
            e.remove();
        }
    }

    /// Encode the rows of `batch` for [`Self::insert`].
    fn encode(&self, batch: &RecordBatch, keys: &[Vec<u8>]) -> Result<Vec<Box<[u8]>>> {
        let rows = self
            .rows
            .convert_columns(&columns_of(batch, &self.order))
            .map_err(internal)?;
        Ok(rows
            .iter()
            .zip(keys)
            .map(|(row, key)| {
                let row = row.as_ref();
                debug_assert!(row.starts_with(key), "the key is the row's prefix");
                stored(key, row)
            })
            .collect())
    }

    /// Overwrite the stored rows whose keys the rows of `batch` have
    /// (an `UPDATE` that sets no key column), reusing each row's
    /// allocation where the new encoding is as long as the old: one
    /// lookup and no allocation per row, where removing and inserting
    /// took two lookups, a hash and three allocations.
    fn replace(&mut self, entry: &Entry, batch: &RecordBatch) -> Result<()> {
        let keys = key_converter(entry, &entry.primary_key)?
            .convert_columns(&columns_of(batch, &entry.primary_key))
            .map_err(internal)?;
        let rows = self
            .rows
            .convert_columns(&columns_of(batch, &self.order))
            .map_err(internal)?;
        for (key, row) in keys.iter().zip(rows.iter()) {
            let (key, row) = (key.as_ref(), row.as_ref());
            let hash = self.hasher.hash_one(key);
            match self.table.find_mut(hash, |stored| stored_key(stored) == key) {
                Some(held) if held.len() == 4 + row.len() => held[4..].copy_from_slice(row),
                Some(held) => *held = stored(key, row),
                None => self.insert(stored(key, row)),
            }
        }
        Ok(())
    }

    fn insert(&mut self, stored: Box<[u8]>) {
        let hash = self.hasher.hash_one(stored_key(&stored));
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, stored, |s| hasher.hash_one(stored_key(s)));
    }

    /// The stored rows with `keys` (each once, however often it is
    /// named), as a batch of `entry`.
    fn batch(&self, entry: &Entry, keys: &[Vec<u8>]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let mut named = HashSet::with_capacity(keys.len());
        let found: Vec<&[u8]> = keys
            .iter()
            .filter(|k| named.insert(&k[..]))
            .filter_map(|k| self.find(k))
            .collect();
        let encoded = self
            .rows
            .convert_rows(found.iter().map(|stored| parser.parse(&stored[4..])))
            .map_err(internal)?;
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.order.len()];
        for (array, c) in encoded.into_iter().zip(&self.order) {
            columns[*c] = Some(array);
        }
        let columns = columns
            .into_iter()
            .map(|c| c.expect("every column decoded"))
            .collect();
        RecordBatch::try_new(entry.schema.clone(), columns).map_err(internal)
    }
}

/// A checked change to one constraint's index, applied once all pass.
enum Change {
    Keys {
        constraint: usize,
        removed: Vec<Vec<u8>>,
        added: Vec<Option<Vec<u8>>>,
    },
    /// The primary key's stored rows replaced by the inserted rows with
    /// the same keys.
    SameKeys,
}

impl KeyIndexes {
    /// Start empty indexes for a new table (none for a source's).
    pub(crate) fn create(&mut self, entry: &Entry) -> Result<()> {
        if entry.source.is_some() {
            return Ok(());
        }
        let rows = if entry.primary_key.is_empty() {
            None
        } else {
            Some(RowsByKey::new(entry)?)
        };
        let others = entry.constraints().len() - usize::from(rows.is_some());
        let unique = (0..others).map(|_| HashSet::new()).collect();
        self.tables.insert(entry.id, TableKeys { rows, unique });
        Ok(())
    }

    /// The keys of a new unique index `name` over columns `cols` of
    /// `entry`, whose rows are now `rows`: refused when two rows without
    /// a NULL among those columns share one. Hold the write lock until
    /// [`KeyIndexes::add_unique`] so that no write comes between.
    pub(crate) fn unique_keys(
        entry: &Entry,
        name: &str,
        cols: &[usize],
        rows: &RecordBatch,
    ) -> Result<HashSet<Vec<u8>>> {
        let mut keys = HashSet::with_capacity(rows.num_rows());
        for (i, k) in key_values(entry, cols, rows)?.into_iter().enumerate() {
            if let Some(k) = k
                && !keys.insert(k)
            {
                return Err(AdapterError::UniqueIndexDuplicate {
                    index: name.to_string(),
                    detail: format!("{} is duplicated.", key_text(entry, cols, rows, i)),
                });
            }
        }
        Ok(keys)
    }

    /// Enforce a unique index with `keys` (from [`KeyIndexes::unique_keys`])
    /// on `table`, whose constraints have just gained it as their last.
    pub(crate) fn add_unique(&mut self, table: GlobalId, keys: HashSet<Vec<u8>>) {
        if let Some(t) = self.tables.get_mut(&table) {
            t.unique.push(keys);
        }
    }

    /// Stop enforcing constraint `c` (in [`Entry::constraints`] order, not
    /// the primary key) of `table`: its unique index was dropped.
    pub(crate) fn remove_unique(&mut self, table: GlobalId, c: usize) {
        if let Some(t) = self.tables.get_mut(&table) {
            let slot = t.unique_slot(c);
            t.unique.remove(slot);
        }
    }

    pub(crate) fn remove(&mut self, table: GlobalId) {
        self.tables.remove(&table);
    }

    /// Whether `table`'s rows can be read by primary key with
    /// [`KeyIndexes::rows`].
    pub(crate) fn has_rows(&self, table: GlobalId) -> bool {
        self.tables.get(&table).is_some_and(|t| t.rows.is_some())
    }

    /// The rows of `entry` whose primary keys (encoded by [`key_rows`])
    /// are `keys`, in that order; absent keys are skipped.
    pub(crate) fn rows(&self, entry: &Entry, keys: &[Vec<u8>]) -> Result<RecordBatch> {
        match self.tables.get(&entry.id).and_then(|t| t.rows.as_ref()) {
            Some(rows) => rows.batch(entry, keys),
            None => Err(internal(format!("table {} keeps no rows by key", entry.name))),
        }
    }

    /// Check that `inserted` breaks no constraint of `entry` once
    /// `deleted` is gone, then record both. A refused write changes
    /// nothing.
    pub(crate) fn apply(
        &mut self,
        entry: &Entry,
        inserted: Option<&RecordBatch>,
        deleted: Option<&RecordBatch>,
    ) -> Result<()> {
        let Some(table) = self.tables.get(&entry.id) else {
            return Ok(());
        };
        let mut changes = Vec::new();
        for (c, (constraint, cols)) in entry.constraints().into_iter().enumerate() {
            let with_rows = c == 0 && table.rows.is_some();
            // An UPDATE whose row i replaces row i with the same key (as
            // one that sets no key column does) keeps the same keys: it
            // cannot break the constraint. Only stored rows change then.
            let same_keys = matches!((inserted, deleted), (Some(ins), Some(del))
                if ins.num_rows() == del.num_rows()
                    && cols.iter().all(|c| ins.column(*c).as_ref() == del.column(*c).as_ref()));
            if same_keys {
                if with_rows {
                    changes.push(Change::SameKeys);
                }
                continue;
            }
            let removed: Vec<Vec<u8>> = match deleted {
                Some(b) => key_values(entry, &cols, b)?.into_iter().flatten().collect(),
                None => Vec::new(),
            };
            let added: Vec<Option<Vec<u8>>> = match inserted {
                Some(b) => key_values(entry, &cols, b)?,
                None => Vec::new(),
            };
            let present = |k: &[u8]| match &table.rows {
                Some(rows) if with_rows => rows.find(k).is_some(),
                _ => table.unique[table.unique_slot(c)].contains(k),
            };
            let removed_set: HashSet<&[u8]> = removed.iter().map(|k| &k[..]).collect();
            let mut seen = HashSet::with_capacity(added.len());
            // Keys with a NULL never conflict.
            for (i, k) in added.iter().enumerate() {
                let Some(k) = k else { continue };
                if (present(k) && !removed_set.contains(&k[..])) || !seen.insert(k) {
                    let b = inserted.expect("keys came from inserted rows");
                    return Err(AdapterError::UniqueViolation {
                        constraint,
                        detail: key_detail(entry, &cols, b, i),
                    });
                }
            }
            changes.push(Change::Keys {
                constraint: c,
                removed,
                added,
            });
        }
        let table = self.tables.get_mut(&entry.id).expect("checked above");
        for change in changes {
            match (change, &mut table.rows) {
                (Change::SameKeys, Some(rows)) => {
                    if let Some(b) = inserted {
                        rows.replace(entry, b)?;
                    }
                }
                (Change::SameKeys, None) => {}
                (
                    Change::Keys {
                        constraint: 0,
                        removed,
                        added,
                    },
                    Some(rows),
                ) => {
                    for k in &removed {
                        rows.remove(k);
                    }
                    if let Some(b) = inserted {
                        // Primary keys are never NULL.
                        let keys: Vec<Vec<u8>> = added.into_iter().flatten().collect();
                        for stored in rows.encode(b, &keys)? {
                            rows.insert(stored);
                        }
                    }
                }
                (
                    Change::Keys {
                        constraint,
                        removed,
                        added,
                    },
                    _,
                ) => {
                    let slot = table.unique_slot(constraint);
                    let index = &mut table.unique[slot];
                    for k in &removed {
                        index.remove(k);
                    }
                    index.extend(added.into_iter().flatten());
                }
            }
        }
        Ok(())
    }
}

/// The encoded primary keys of each row of `batch`.
pub(crate) fn key_rows(entry: &Entry, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    Ok(key_values(entry, &entry.primary_key, batch)?
        .into_iter()
        .map(|k| k.unwrap_or_default())
        .collect())
}

/// The encoded values of columns `cols` of each row of `batch` (as the
/// workers encode keys), `None` where one of them is NULL.
fn key_values(entry: &Entry, cols: &[usize], batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
    let converter = key_converter(entry, cols)?;
    let arrays = columns_of(batch, cols);
    let rows = converter.convert_columns(&arrays).map_err(internal)?;
    Ok(rows
        .iter()
        .enumerate()
        .map(|(r, row)| {
            arrays
                .iter()
                .all(|a| a.is_valid(r))
                .then(|| row.as_ref().to_vec())
        })
        .collect())
}

/// Encodes columns `cols` of `entry` as the key index does.
fn key_converter(entry: &Entry, cols: &[usize]) -> Result<RowConverter> {
    let fields = cols
        .iter()
        .map(|i| SortField::new(entry.schema.field(*i).data_type().clone()))
        .collect();
    RowConverter::new(fields).map_err(internal)
}

fn columns_of(batch: &RecordBatch, cols: &[usize]) -> Vec<ArrayRef> {
    cols.iter().map(|i| batch.column(*i).clone()).collect()
}

/// `Key (a, b)=(1, x) already exists.`
fn key_detail(entry: &Entry, cols: &[usize], batch: &RecordBatch, row: usize) -> String {
    format!("{} already exists.", key_text(entry, cols, batch, row))
}

/// `Key (a, b)=(1, x)`: row `row` of `batch` by columns `cols`.
fn key_text(entry: &Entry, cols: &[usize], batch: &RecordBatch, row: usize) -> String {
    let names: Vec<&str> = cols.iter().map(|i| entry.columns[*i].name.as_str()).collect();
    let options = FormatOptions::default();
    let values: Vec<String> = cols
        .iter()
        .map(|i| {
            ArrayFormatter::try_new(batch.column(*i).as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .unwrap_or_default()
        })
        .collect();
    format!("Key ({})=({})", names.join(", "), values.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
        IntervalMonthDayNanoArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, IntervalMonthDayNano, Schema, TimeUnit};
    use weir_sql::RelationKind;

    use super::*;
    use crate::catalog::ColumnDef;

    /// A table of every column type, keyed by (text, int): its rows come
    /// back from the index exactly as they went in.
    fn table() -> (Entry, RecordBatch) {
        let fields = vec![
            Field::new("f", DataType::Float64, true),
            Field::new("k1", DataType::Utf8, false),
            Field::new("b", DataType::Boolean, true),
            Field::new("k2", DataType::Int32, false),
            Field::new("n", DataType::Decimal128(10, 2), true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
            Field::new(
                "i",
                DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
                true,
            ),
            Field::new("y", DataType::Binary, true),
            Field::new("l", DataType::Int64, true),
        ];
        let schema = Arc::new(Schema::new(fields));
        let columns: Vec<ColumnDef> = schema
            .fields()
            .iter()
            .map(|f| ColumnDef {
                name: f.name().clone(),
                sql_type: String::new(),
                nullable: f.is_nullable(),
                max_length: None,
            })
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.25)])),
                Arc::new(StringArray::from(vec!["a", "", "ab"])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(Int32Array::from(vec![1, 1, -7])),
                Arc::new(
                    Decimal128Array::from(vec![Some(150), None, Some(-1)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(0), None, Some(1_700_000_000_000_000)])
                        .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from(vec![Some(1), Some(-1), None])),
                Arc::new(IntervalMonthDayNanoArray::from(vec![
                    Some(IntervalMonthDayNano::new(1, 2, 3)),
                    None,
                    Some(IntervalMonthDayNano::new(0, 0, -5)),
                ])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\x00\xff"[..]),
                    None,
                    Some(&b""[..]),
                ])),
                Arc::new(Int64Array::from(vec![None, Some(i64::MIN), Some(i64::MAX)])),
            ],
        )
        .unwrap();
        let entry = Entry {
            id: 7,
            name: "every".into(),
            kind: RelationKind::Table,
            schema,
            columns,
            primary_key: vec![1, 3],
            unique: vec![vec![9]],
            create_sql: String::new(),
            view_plan: None,
            plan: None,
            depends_on: Vec::new(),
            source: None,
            append_only: false,
            indexes: Vec::new(),
        };
        (entry, batch)
    }

    #[test]
    fn rows_come_back_by_key_as_they_went_in() {
        let (entry, batch) = table();
        let mut indexes = KeyIndexes::default();
        indexes.create(&entry).unwrap();
        assert!(indexes.has_rows(entry.id));
        indexes.apply(&entry, Some(&batch), None).unwrap();
        let keys = key_rows(&entry, &batch).unwrap();
        let reversed: Vec<Vec<u8>> = keys.iter().rev().cloned().collect();
        let back = indexes.rows(&entry, &reversed).unwrap();
        let expected: Vec<usize> = vec![2, 1, 0];
        for c in 0..batch.num_columns() {
            let want = arrow::compute::take(
                batch.column(c),
                &arrow::array::UInt32Array::from(expected.iter().map(|i| *i as u32).collect::<Vec<_>>()),
                None,
            )
            .unwrap();
            assert_eq!(back.column(c).as_ref(), want.as_ref(), "column {c}");
        }
        // A key named twice is one row; an absent key none.
        let twice = vec![keys[0].clone(), keys[0].clone(), b"absent".to_vec()];
        assert_eq!(indexes.rows(&entry, &twice).unwrap().num_rows(), 1);
    }

    #[test]
    fn an_update_keeping_its_keys_replaces_the_stored_rows() {
        let (entry, batch) = table();
        let mut indexes = KeyIndexes::default();
        indexes.create(&entry).unwrap();
        indexes.apply(&entry, Some(&batch), None).unwrap();
        // Rows 0 and 2 with their keys kept: row 0's float changes (an
        // encoding of the same length), row 2's binary value grows.
        let old = batch.slice(0, 3);
        let mut columns = old.columns().to_vec();
        columns[0] = Arc::new(Float64Array::from(vec![Some(9.0), None, Some(-0.25)]));
        columns[8] = Arc::new(BinaryArray::from(vec![
            Some(&b"\x00\xff"[..]),
            None,
            Some(&b"a longer value than before"[..]),
        ]));
        let new = RecordBatch::try_new(entry.schema.clone(), columns).unwrap();
        indexes.apply(&entry, Some(&new), Some(&old)).unwrap();
        let keys = key_rows(&entry, &batch).unwrap();
        let back = indexes.rows(&entry, &keys).unwrap();
        for c in 0..batch.num_columns() {
            assert_eq!(back.column(c).as_ref(), new.column(c).as_ref(), "column {c}");
        }
    }

    #[test]
    fn a_refused_write_changes_no_index() {
        let (entry, batch) = table();
        let mut indexes = KeyIndexes::default();
        indexes.create(&entry).unwrap();
        indexes.apply(&entry, Some(&batch.slice(0, 2)), None).unwrap();
        // A row already there breaks the primary key.
        let err = indexes.apply(&entry, Some(&batch.slice(0, 1)), None).unwrap_err();
        assert!(
            matches!(err, AdapterError::UniqueViolation { ref constraint, .. } if constraint == "every_pkey")
        );
        // Replacing row 1 with a row whose unique `l` collides with row 1's
        // own (deleted in the same write) is allowed...
        indexes
            .apply(&entry, Some(&batch.slice(1, 1)), Some(&batch.slice(1, 1)))
            .unwrap();
        // ...and one colliding with another row's `l` is not, leaving the
        // rows as they were.
        let mut clash = batch.slice(2, 1).columns().to_vec();
        clash[9] = Arc::new(Int64Array::from(vec![i64::MIN]));
        let clash = RecordBatch::try_new(entry.schema.clone(), clash).unwrap();
        let err = indexes.apply(&entry, Some(&clash), None).unwrap_err();
        assert!(
            matches!(err, AdapterError::UniqueViolation { ref constraint, .. } if constraint == "every_l_key")
        );
        let keys = key_rows(&entry, &batch).unwrap();
        assert_eq!(indexes.rows(&entry, &keys).unwrap().num_rows(), 2);
    }
}
