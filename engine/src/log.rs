//! A table's rows on one worker, kept as the Arrow batches that were
//! written, and the inputs of the dataflows that read the table.
//!
//! Tables used to be arranged like views: by the whole row, or by primary
//! key so that keyed writes could read their rows. Neither paid: a
//! dataflow importing the arrangement only flattened it back into a
//! collection, a peek read every row of it, keyed writes read their rows
//! from the coordinator's key index, and sorting each written row into the
//! arrangement was a third of a Nexmark run's time. So the log keeps this
//! worker's slice of each write as it came and sorts nothing. Each dataflow
//! that reads the table gets an input of its own, fed the log when the
//! dataflow is built and every write after. Peeks read the log, cancelling
//! deletions in a hash table when there are any.
//!
//! This module holds the rows and feeds the inputs; building, scheduling
//! and dropping dataflows is `compute`'s.

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use differential_dataflow::input::InputSession;

use crate::row::{Row, RowCodec};
use crate::{Diff, EngineError, Time};

/// Writes smaller than this are merged into one batch when the log
/// compacts, so that many single-row `INSERT`s do not stay many batches.
const CHUNK_ROWS: usize = 64 * 1024;

/// A dataflow's input of a table's rows.
pub type TableReader = InputSession<Time, Row, Diff>;

#[derive(Clone)]
struct Entry {
    batch: RecordBatch,
    time: Time,
    diff: Diff,
}

/// A consolidation on its own thread (see [`TableLog::compact`]).
struct Consolidating {
    /// The entries at the front of the log that its result replaces.
    covers: usize,
    result: std::sync::mpsc::Receiver<Result<(Vec<Entry>, usize), EngineError>>,
}

struct Reader {
    dataflow: usize,
    input: TableReader,
}

/// One worker's part of an unkeyed table (see the module comment).
pub struct TableLog {
    codec: RowCodec,
    /// A keyed table's key columns and their codec, to read rows by key.
    key: Option<(Vec<usize>, RowCodec)>,
    /// In the order written, so in time order.
    entries: Vec<Entry>,
    readers: Vec<Reader>,
    /// Entries left by the last compaction; the next one waits until the
    /// log has twice as many.
    compacted: usize,
    /// Rows left the last time deletions were cancelled.
    consolidated_rows: usize,
    consolidating: Option<Consolidating>,
}

impl TableLog {
    pub fn new(codec: RowCodec, key: Option<(Vec<usize>, RowCodec)>) -> Self {
        TableLog {
            codec,
            key,
            entries: Vec::new(),
            readers: Vec::new(),
            compacted: 0,
            consolidated_rows: 0,
            consolidating: None,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        self.codec.schema()
    }

    /// Keep this worker's part of a write, and hand it to every reader:
    /// the rows whose hash (of the key columns, or of every column for a
    /// table without a key) falls to worker `index` of `peers`. A row and
    /// its later deletion hash alike, so each worker's part is a table in
    /// its own right, never holding a negative count, which reads and
    /// compaction rely on. (Slicing batches by position, as tables fed
    /// arrangements did, put an `UPDATE`'s deletion on one worker and the
    /// row it deletes on another.)
    pub fn write_part(
        &mut self,
        batch: RecordBatch,
        time: Time,
        diff: Diff,
        index: usize,
        peers: usize,
    ) -> Result<(), EngineError> {
        let batch = self.conform(batch)?;
        let part = if peers == 1 {
            batch
        } else {
            let columns: Vec<ArrayRef> = match &self.key {
                Some((key, _)) => key.iter().map(|i| batch.column(*i).clone()).collect(),
                None => batch.columns().to_vec(),
            };
            let mut hashes = vec![0u64; batch.num_rows()];
            create_hashes(columns.iter(), &RandomState::with_seed(0), &mut hashes)
                .map_err(|e| EngineError::Encoding(e.to_string()))?;
            let peers = peers as u64;
            let mine = BooleanArray::from_iter(hashes.iter().map(|h| Some(h % peers == index as u64)));
            filter_record_batch(&batch, &mine).map_err(|e| EngineError::Encoding(e.to_string()))?
        };
        if part.num_rows() > 0 {
            self.append(part, time, diff)?;
        }
        Ok(())
    }

    /// [`TableLog::write_part`] on a lone worker.
    #[cfg(test)]
    fn write(&mut self, batch: RecordBatch, time: Time, diff: Diff) -> Result<(), EngineError> {
        self.write_part(batch, time, diff, 0, 1)
    }

    fn append(&mut self, batch: RecordBatch, time: Time, diff: Diff) -> Result<(), EngineError> {
        if let Some((last, rest)) = self.readers.split_last_mut() {
            let rows = self.codec.encode(batch.columns(), batch.num_rows())?;
            for reader in rest {
                for row in &rows {
                    reader.input.update_at(row.clone(), time, diff);
                }
            }
            for row in rows {
                last.input.update_at(row, time, diff);
            }
        }
        self.entries.push(Entry { batch, time, diff });
        Ok(())
    }

    /// Tell every reader that no write before `upper` will come.
    pub fn advance(&mut self, upper: Time) {
        for reader in &mut self.readers {
            reader.input.advance_to(upper);
            reader.input.flush();
        }
    }

    /// Start feeding `input`, an input of `dataflow`: everything the log
    /// holds (at `since` or later, as an arrangement compacted to `since`
    /// would present it), then every later write.
    pub fn attach(
        &mut self,
        dataflow: usize,
        mut input: TableReader,
        since: Time,
        upper: Time,
    ) -> Result<(), EngineError> {
        for entry in &self.entries {
            let rows = self.codec.encode(entry.batch.columns(), entry.batch.num_rows())?;
            for row in rows {
                input.update_at(row, entry.time.max(since), entry.diff);
            }
        }
        input.advance_to(upper);
        input.flush();
        self.readers.push(Reader { dataflow, input });
        Ok(())
    }

    /// Stop feeding `dataflow` (it is being dropped).
    pub fn detach(&mut self, dataflow: usize) {
        self.readers.retain(|r| r.dataflow != dataflow);
    }

    /// The dataflows this table feeds.
    pub fn readers(&self) -> impl Iterator<Item = usize> + '_ {
        self.readers.iter().map(|r| r.dataflow)
    }

    /// The rows at `time`, every write at or before it applied: all of
    /// them, or (for a keyed table) those with one of `keys`, encoded as
    /// the key columns alone. Reading by key scans this worker's part of
    /// the table; the coordinator's key index answers the common cases.
    pub fn read(&self, time: Time, keys: Option<&[Row]>) -> Result<RecordBatch, String> {
        let upto = self.entries.partition_point(|e| e.time <= time);
        let entries = &self.entries[..upto];
        let all = if entries.iter().all(|e| e.diff == 1) {
            concat_batches(self.schema(), entries.iter().map(|e| &e.batch)).map_err(|e| e.to_string())?
        } else {
            let (rows, diffs) = consolidate(&self.codec, entries).map_err(|e| e.to_string())?;
            let mut out = crate::compute::Gathered::default();
            for (row, diff) in rows.iter().zip(diffs) {
                out.push(row, diff)?;
            }
            out.into_batch(&self.codec)?
        };
        match (keys, &self.key) {
            (Some(keys), Some((columns, codec))) => {
                let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
                let columns: Vec<_> = columns.iter().map(|i| all.column(*i).clone()).collect();
                let encoded = codec
                    .encode(&columns, all.num_rows())
                    .map_err(|e| e.to_string())?;
                let keep = arrow::array::BooleanArray::from_iter(
                    encoded.iter().map(|k| Some(wanted.contains(k.as_slice()))),
                );
                arrow::compute::filter_record_batch(&all, &keep).map_err(|e| e.to_string())
            }
            _ => Ok(all),
        }
    }

    /// Let history before `since` merge. Once the log has twice the
    /// entries it had after the last compaction, the writes at or before
    /// `since` become one time and small batches are merged. Once their
    /// rows have also doubled since deletions were last cancelled, and
    /// some of them delete, the deletions cancel what they deleted: that
    /// touches every settled row, so it runs on a thread of its own (the
    /// worker goes on; a table of a million rows took ~0.9 s to cancel in
    /// line, stalling every view behind it) and its result replaces the
    /// entries it covered at a later compaction.
    pub fn compact(&mut self, since: Time) -> Result<(), EngineError> {
        if let Some(running) = &self.consolidating {
            match running.result.try_recv() {
                Ok(result) => {
                    let covers = running.covers;
                    self.consolidating = None;
                    let (entries, rows) = result?;
                    self.consolidated_rows = rows;
                    self.entries.splice(..covers, entries);
                    self.compacted = self.entries.len();
                }
                // Until it lands, the entries it covers stay as they are.
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.consolidating = None,
            }
        }
        if self.entries.len() < (2 * self.compacted).max(32) {
            return Ok(());
        }
        let settled = self.entries.partition_point(|e| e.time <= since);
        let rows: usize = self.entries[..settled].iter().map(|e| e.batch.num_rows()).sum();
        if self.entries[..settled].iter().any(|e| e.diff < 0) && rows >= 2 * self.consolidated_rows {
            let entries: Vec<Entry> = self.entries[..settled].to_vec();
            let codec = self.codec.duplicate();
            let (send, result) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("weir-table-log".into())
                .spawn(move || {
                    let _ = send.send(consolidated(&codec, &entries, since));
                })
                .map_err(|e| EngineError::Encoding(format!("cannot start a thread: {e}")))?;
            self.consolidating = Some(Consolidating {
                covers: settled,
                result,
            });
            return Ok(());
        }
        let rest = self.entries.split_off(settled);
        let mut small: Vec<RecordBatch> = Vec::new();
        let mut small_diff = 1;
        for entry in std::mem::take(&mut self.entries) {
            if entry.batch.num_rows() >= CHUNK_ROWS {
                self.entries.push(Entry { time: since, ..entry });
                continue;
            }
            if entry.diff != small_diff {
                self.push_merged(&mut small, since, small_diff)?;
                small_diff = entry.diff;
            }
            small.push(entry.batch);
            if small.iter().map(|b| b.num_rows()).sum::<usize>() >= CHUNK_ROWS {
                self.push_merged(&mut small, since, small_diff)?;
            }
        }
        self.push_merged(&mut small, since, small_diff)?;
        self.entries.extend(rest);
        self.compacted = self.entries.len();
        Ok(())
    }

    /// Wait for a consolidation running on its own thread (tests).
    #[cfg(test)]
    fn settle(&mut self, since: Time) {
        while self.consolidating.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.compact(since).unwrap();
        }
    }

    fn push_merged(
        &mut self,
        small: &mut Vec<RecordBatch>,
        time: Time,
        diff: Diff,
    ) -> Result<(), EngineError> {
        if small.is_empty() {
            return Ok(());
        }
        let batch =
            concat_batches(self.schema(), small.iter()).map_err(|e| EngineError::Encoding(e.to_string()))?;
        small.clear();
        self.entries.push(Entry { batch, time, diff });
        Ok(())
    }

    /// The batch with this table's schema: its columns cast where a
    /// writer's types differ, so that reads return the table's types.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, EngineError> {
        let schema = self.schema();
        let columns = self.codec.conform(batch.columns())?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(schema.clone(), columns, &options)
            .map_err(|e| EngineError::Encoding(e.to_string()))
    }
}

/// The rows of `entries` with their net counts (non-zero), summed in a
/// hash table rather than sorted: a keyed table updated in place cancels
/// most of its log this way at a fraction of a sort's cost.
fn consolidate(codec: &RowCodec, entries: &[Entry]) -> Result<(Vec<Row>, Vec<Diff>), EngineError> {
    let mut counts: hashbrown::HashMap<Row, Diff> = hashbrown::HashMap::new();
    for entry in entries {
        let rows = codec.encode(entry.batch.columns(), entry.batch.num_rows())?;
        for row in rows {
            *counts.entry(row).or_insert(0) += entry.diff;
        }
    }
    Ok(counts.into_iter().filter(|(_, d)| *d != 0).unzip())
}

/// `entries` with each deletion cancelling what it deleted, as at most
/// two entries at `since` (insertions, and deletions of rows the log does
/// not hold, which only a bug would write), with the rows they hold.
fn consolidated(
    codec: &RowCodec,
    entries: &[Entry],
    since: Time,
) -> Result<(Vec<Entry>, usize), EngineError> {
    let (rows, diffs) = consolidate(codec, entries)?;
    let mut out = Vec::new();
    for sign in [1, -1] {
        let (mut batch_rows, mut take) = (Vec::new(), Vec::new());
        for (row, diff) in rows.iter().zip(&diffs) {
            if diff.signum() == sign {
                take.extend(std::iter::repeat_n(batch_rows.len() as u32, diff.unsigned_abs()));
                batch_rows.push(row.as_slice());
            }
        }
        if !batch_rows.is_empty() {
            let batch = codec.decode(batch_rows.into_iter())?;
            let batch = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(take))
                .map_err(|e| EngineError::Encoding(e.to_string()))?;
            out.push(Entry {
                batch,
                time: since,
                diff: sign as Diff,
            });
        }
    }
    let held = out.iter().map(|e| e.batch.num_rows()).sum();
    Ok((out, held))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(schema: &SchemaRef, rows: &[(i64, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn sorted(batch: &RecordBatch) -> Vec<(i64, String)> {
        let a = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let b = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let mut rows: Vec<_> = (0..batch.num_rows())
            .map(|i| (a.value(i), b.value(i).to_string()))
            .collect();
        rows.sort();
        rows
    }

    /// Reads at each time see exactly the writes up to it, before and
    /// after compaction, duplicates and deletions included.
    #[test]
    fn reads_see_the_writes_up_to_their_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let mut log = TableLog::new(RowCodec::new(schema.clone()).unwrap(), None);
        // 60 single-row inserts, a duplicate, then deletions of some.
        const N: i64 = 60;
        for i in 0..N {
            log.write(batch(&schema, &[(i, "x")]), i as Time, 1).unwrap();
        }
        log.write(batch(&schema, &[(3, "x")]), N as Time, 1).unwrap();
        log.write(batch(&schema, &[(3, "x"), (5, "x")]), N as Time + 1, -1)
            .unwrap();
        let expect = |upto: i64| -> Vec<(i64, String)> {
            let mut rows: Vec<_> = (0..N.min(upto + 1)).map(|i| (i, "x".to_string())).collect();
            if upto >= N {
                rows.push((3, "x".into()));
            }
            if upto > N {
                rows.retain(|r| r.0 != 5);
                let i = rows.iter().position(|r| r.0 == 3).unwrap();
                rows.remove(i);
            }
            rows.sort();
            rows
        };
        let times = [0, 7, 20, 39, N, N + 1];
        for t in times {
            assert_eq!(sorted(&log.read(t as Time, None).unwrap()), expect(t), "at {t}");
        }
        log.compact(20).unwrap();
        assert_eq!(
            log.entries.len(),
            1 + (N as usize - 21) + 2,
            "the 21 writes up to 20 merged"
        );
        for t in &times[2..] {
            assert_eq!(
                sorted(&log.read(*t as Time, None).unwrap()),
                expect(*t),
                "at {t} after compacting to 20"
            );
        }
        log.compacted = 0;
        log.compact(N as Time + 1).unwrap();
        log.settle(N as Time + 1);
        assert_eq!(sorted(&log.read(N as Time + 1, None).unwrap()), expect(N + 1));
        // The deletion cancelled what it deleted: one batch, each row once.
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.entries[0].batch.num_rows(), N as usize - 1);
    }

    /// A keyed table's log answers reads by key, after updates in place
    /// and after compaction cancelled them.
    #[test]
    fn reads_by_key_see_the_latest_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]));
        let key_schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let key_codec = RowCodec::new(key_schema.clone()).unwrap();
        let key = |k: i64| -> Row {
            key_codec
                .encode(&[Arc::new(Int64Array::from(vec![k]))], 1)
                .unwrap()
                .remove(0)
        };
        let mut log = TableLog::new(
            RowCodec::new(schema.clone()).unwrap(),
            Some((vec![0], RowCodec::new(key_schema).unwrap())),
        );
        log.write(batch(&schema, &[(1, "a"), (2, "b1"), (3, "c")]), 1, 1)
            .unwrap();
        for t in 2..40 {
            // Row 2 rewritten at every time.
            log.write(batch(&schema, &[(2, &format!("b{}", t - 1))]), t, -1)
                .unwrap();
            log.write(batch(&schema, &[(2, &format!("b{t}"))]), t, 1).unwrap();
        }
        let b = |s: &str| s.to_string();
        assert_eq!(sorted(&log.read(5, Some(&[key(2)])).unwrap()), vec![(2, b("b5"))]);
        for compacted_to in [None, Some(30), Some(39)] {
            if let Some(since) = compacted_to {
                log.compacted = 0;
                log.compact(since).unwrap();
                log.settle(since);
            }
            assert_eq!(
                sorted(&log.read(39, Some(&[key(2), key(3), key(9)])).unwrap()),
                vec![(2, b("b39")), (3, b("c"))],
                "{compacted_to:?}"
            );
            assert_eq!(sorted(&log.read(39, Some(&[])).unwrap()), vec![]);
            assert_eq!(sorted(&log.read(39, None).unwrap()).len(), 3);
        }
    }

    /// Workers split a write between them, and a deletion goes to the
    /// worker that holds the row it deletes.
    #[test]
    fn each_worker_holds_its_own_part() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let rows: Vec<(i64, String)> = (0..100).map(|i| (i, format!("r{}", i % 7))).collect();
        let refs: Vec<(i64, &str)> = rows.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let mut parts: Vec<TableLog> = (0..3)
            .map(|_| TableLog::new(RowCodec::new(schema.clone()).unwrap(), None))
            .collect();
        for (index, log) in parts.iter_mut().enumerate() {
            log.write_part(batch(&schema, &refs), 1, 1, index, 3).unwrap();
            log.write_part(batch(&schema, &refs[10..20]), 2, -1, index, 3)
                .unwrap();
        }
        let mut all = Vec::new();
        for log in &parts {
            let part = sorted(&log.read(2, None).unwrap());
            assert!(part.len() < 90, "spread over the workers: {}", part.len());
            all.extend(part);
        }
        all.sort();
        let mut expect = rows.clone();
        expect.drain(10..20);
        assert_eq!(all, expect);
    }
}
