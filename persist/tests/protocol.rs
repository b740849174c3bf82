//! The persist protocol against a real directory: restore, fencing under
//! every interleaving of two owners, compaction, and bad objects.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use weir_persist::{CatalogItem, CatalogOp, Commit, Location, Persist, PersistError, Updates};

fn rows(ids: impl IntoIterator<Item = i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(ids))]).unwrap()
}

fn table(id: u64) -> CatalogOp {
    CatalogOp::Create(CatalogItem {
        id,
        sql: format!("CREATE TABLE t{id} (k bigint)"),
        shard: true,
        detail: None,
    })
}

/// Make table `id`'s catalog entry (and shard) durable.
async fn create_table(p: &mut Persist, id: u64) {
    p.commit(Commit {
        catalog: vec![table(id)],
        next_id: id + 1,
        ..Default::default()
    })
    .await
    .unwrap();
}

fn append(time: u64, shard: u64, batch: RecordBatch, diff: i64) -> Commit {
    Commit {
        time: Some(time),
        appends: vec![(shard, vec![Updates::uniform(batch, diff)])],
        ..Default::default()
    }
}

async fn open(dir: &tempfile::TempDir) -> weir_persist::Result<(Persist, weir_persist::Restored)> {
    Persist::open(Location::open(dir.path().to_str().unwrap())?).await
}

fn keys(restored: &weir_persist::Restored, shard: u64) -> Vec<(i64, i64)> {
    let Some(Some(u)) = restored.shards.get(&shard) else {
        return Vec::new();
    };
    let col = u.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
    // Equal rows may be stored once with diff n or n times: sum them.
    let mut out = std::collections::BTreeMap::new();
    for (k, d) in col.values().iter().zip(&u.diffs) {
        *out.entry(*k).or_insert(0) += d;
    }
    out.into_iter().collect()
}

#[tokio::test]
async fn commits_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, r) = open(&dir).await.unwrap();
    assert!(r.catalog.is_empty());
    create_table(&mut p, 1).await;
    p.commit(append(10, 1, rows([1, 2, 2, 3]), 1)).await.unwrap();
    p.commit(append(11, 1, rows([3]), -1)).await.unwrap();
    drop(p);
    let (p, r) = open(&dir).await.unwrap();
    assert_eq!(r.catalog.len(), 1);
    assert_eq!(r.next_id, 2);
    assert_eq!(r.upper, 12);
    assert_eq!(keys(&r, 1), vec![(1, 1), (2, 2)]);
    assert_eq!(p.state().epoch, 2);
}

#[tokio::test]
async fn a_second_owner_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = open(&dir).await.unwrap();
    create_table(&mut a, 1).await;
    a.commit(append(5, 1, rows([1]), 1)).await.unwrap();
    let (mut b, r) = open(&dir).await.unwrap();
    // B saw everything A acknowledged.
    assert_eq!(keys(&r, 1), vec![(1, 1)]);
    // A's next write is refused, whatever B did meanwhile.
    let err = a.commit(append(6, 1, rows([2]), 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            PersistError::Fenced {
                ours: 1,
                theirs: 2,
                ..
            }
        ),
        "{err}"
    );
    // B moves on, deleting old metadata versions; A still cannot write
    // (its version number is free again, but a newer one is listed).
    for t in 10..15 {
        b.commit(append(t, 1, rows([t as i64]), 1)).await.unwrap();
    }
    let err = a.commit(append(20, 1, rows([99]), 1)).await.unwrap_err();
    assert!(matches!(err, PersistError::Fenced { .. }), "{err}");
    drop((a, b));
    let (_, r) = open(&dir).await.unwrap();
    let got: HashSet<i64> = keys(&r, 1).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        got,
        HashSet::from([1, 10, 11, 12, 13, 14]),
        "A's refused writes are absent"
    );
}

#[tokio::test]
async fn compaction_bounds_objects_and_keeps_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(&dir).await.unwrap();
    create_table(&mut p, 1).await;
    p.commit(append(1, 1, rows(0..100), 1)).await.unwrap();
    // 300 updates of one row each: delete k, insert k + 1000.
    for t in 0..300u64 {
        let k = (t % 100) as i64 + (t / 100) as i64 * 1000;
        p.commit(Commit {
            time: Some(t + 2),
            appends: vec![
                (1, vec![Updates::uniform(rows([k]), -1)]),
                (1, vec![Updates::uniform(rows([k + 1000]), 1)]),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        compact(&mut p, |_| {}).await;
        assert!(p.state().objects() <= 12, "{} objects", p.state().objects());
    }
    let files = walk(dir.path());
    assert!(files <= 14, "{files} files on disk");
    drop(p);
    let (_, r) = open(&dir).await.unwrap();
    let expected: Vec<(i64, i64)> = (0..100).map(|k| (k + 3000, 1)).collect();
    assert_eq!(keys(&r, 1), expected);
}

/// A table that is only appended to: small objects are merged eight at a
/// time, each row rewritten about once, and objects of half a million
/// rows or more are left as they are.
#[tokio::test]
async fn appends_are_merged_eight_at_a_time_and_big_objects_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(&dir).await.unwrap();
    create_table(&mut p, 1).await;
    let step = 200_000i64;
    let (mut written, mut rewritten) = (0u64, 0u64);
    for t in 0..40u64 {
        let from = t as i64 * step;
        p.commit(append(t + 1, 1, rows(from..from + step), 1))
            .await
            .unwrap();
        written += step as u64;
        compact(&mut p, |run| {
            assert!(run.len() >= 8, "{} objects merged", run.len());
            assert!(
                run.iter().all(|b| b.updates < 1 << 19),
                "a big object is merged again"
            );
            rewritten += run.iter().map(|b| b.updates).sum::<u64>();
        })
        .await;
    }
    // Every row rewritten at most once; four sealed objects of 1.6-1.8 M
    // rows, and the small ones since (fewer than nine).
    assert!(rewritten <= written, "{rewritten} of {written} rows rewritten");
    assert!(p.state().objects() <= 4 + 8, "{} objects", p.state().objects());
    drop(p);
    let (_, r) = open(&dir).await.unwrap();
    assert_eq!(keys(&r, 1).len(), 40 * step as usize);
}

/// Run every merge that is due, each seen by `check` first.
async fn compact(p: &mut Persist, mut check: impl FnMut(&[weir_persist::BatchRef])) {
    for (shard, run) in p.compactions_due(&HashSet::new()) {
        check(&run);
        let c = p.compactor().compact(shard, run).await.unwrap();
        p.commit(Commit {
            compacted: vec![c],
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn missing_and_corrupt_objects_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(&dir).await.unwrap();
    create_table(&mut p, 7).await;
    p.commit(append(1, 7, rows([1]), 1)).await.unwrap();
    let key = p.state().shards[&7][0].key.clone();
    drop(p);
    let path = dir.path().join(&key);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = open(&dir).await.err().unwrap();
    assert!(
        matches!(err, PersistError::Corrupt { .. }) && err.to_string().contains(&key),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    let err = open(&dir).await.err().unwrap();
    assert!(
        matches!(err, PersistError::Missing { .. }) && err.to_string().contains(&key),
        "{err}"
    );
    // A garbled metadata object is named too.
    let meta = std::fs::read_dir(dir.path().join("meta"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&meta, b"{not json").unwrap();
    let err = open(&dir).await.err().unwrap();
    let name = meta.file_name().unwrap().to_str().unwrap();
    assert!(
        matches!(err, PersistError::Corrupt { .. }) && err.to_string().contains(name),
        "{err}"
    );
}

#[tokio::test]
async fn unreferenced_objects_of_old_epochs_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = open(&dir).await.unwrap();
    create_table(&mut p, 1).await;
    p.commit(append(1, 1, rows([1]), 1)).await.unwrap();
    drop(p);
    // What a crash between writing a batch and its metadata leaves.
    let orphan = dir.path().join("data/1/0000000001-000000000099.arrow");
    std::fs::write(&orphan, b"partial").unwrap();
    let (_, r) = open(&dir).await.unwrap();
    assert_eq!(keys(&r, 1), vec![(1, 1)]);
    assert!(!orphan.exists());
}
