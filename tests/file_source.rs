//! The file source end to end: CSV, JSON and Parquet files from a local
//! directory and from a real S3-compatible server (moto), once and
//! watching, schemas inferred and declared, malformed rows reported by
//! file and line and resumed once fixed, exactly once across `kill -9`,
//! and its errors.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{Moto, Server, error, exec, sorted, state_dir, wait_state};
use tokio_postgres::Client;

/// Wait until `sql` answers `want`.
async fn wait_for(c: &Client, sql: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = sorted(c, sql).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count(*), count(DISTINCT id), min(id), max(id)` of `big`, as
/// `sorted` gives it.
async fn id_span(c: &Client) -> Vec<String> {
    sorted(
        c,
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM big",
    )
    .await
}

/// Wait while `sql` still answers `now` (120 s at most).
async fn wait_while(c: &Client, sql: &str, now: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sorted(c, sql).await == vec![now] {
        assert!(Instant::now() < deadline, "{sql}: still {now}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Write `body` to `dir/name` as a writer should: to a temporary name,
/// then renamed into place.
fn write(dir: &Path, name: &str, body: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn parquet(rows: &[(i64, &str, f64)]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

#[tokio::test]
async fn csv_json_and_parquet_once_and_watching() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = |p: &str| format!("file://{}/{p}", d.display());
    write(
        d,
        "a.csv",
        b"id,name,amount,day\n1,ada,10.5,2024-01-02\n2,bob,,2024-01-03\n",
    );
    write(d, "b.csv", b"id,name,amount,day\n3,\"cy, jr\",7.25,2024-02-01\n");
    std::fs::create_dir(d.join("events")).unwrap();
    write(
        &d.join("events"),
        "1.json",
        b"{\"user\": \"ada\", \"n\": 1}\n{\"user\": \"bob\", \"n\": 2}\n",
    );
    write(d, "p1.parquet", &parquet(&[(1, "x", 0.5), (2, "y", 1.5)]));

    let s = Server::start();
    let c = s.connect().await;
    // CSV, once, schema from the header and the first rows.
    exec(
        &c,
        &format!(
            "CREATE SOURCE sales FROM FILES '{}' (FORMAT CSV, HEADER);
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(amount) AS total, min(day) AS first FROM sales",
            url("*.csv")
        ),
    )
    .await;
    wait_state(&c, "sales", |s| s == "finished").await;
    assert_eq!(
        sorted(
            &c,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'sales'"
        )
        .await,
        vec!["amount|double precision", "day|date", "id|bigint", "name|text"]
    );
    assert_eq!(
        sorted(&c, "SELECT * FROM sales").await,
        vec![
            "1|ada|10.5|2024-01-02",
            "2|bob|NULL|2024-01-03",
            "3|cy, jr|7.25|2024-02-01"
        ]
    );
    assert_eq!(
        sorted(&c, "SELECT * FROM totals").await,
        vec!["3|17.75|2024-01-02"]
    );
    let a = url("a.csv");
    assert_eq!(
        sorted(&c, "SELECT * FROM sales_progress").await,
        vec![format!("{a}|2|t"), format!("{}|1|t", url("b.csv"))]
    );
    // Once means once: a later file is not read.
    write(d, "c.csv", b"id,name,amount,day\n4,dee,1,2024-03-01\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sorted(&c, "SELECT n FROM totals").await, vec!["3"]);
    assert_eq!(
        sorted(
            &c,
            "SELECT type, connection FROM weir_catalog.sources WHERE name = 'sales'"
        )
        .await,
        vec![format!("files CSV|{}", url("*.csv"))]
    );

    // JSON, watching a directory tree (format from the extension).
    exec(
        &c,
        &format!(
            "CREATE SOURCE ev FROM FILES '{}' WATCH;
             CREATE MATERIALIZED VIEW per_user AS SELECT \"user\", sum(n) AS n FROM ev GROUP BY \"user\"",
            url("events/**/*.json")
        ),
    )
    .await;
    wait_for(&c, "SELECT * FROM per_user", &["ada|1", "bob|2"]).await;
    assert_eq!(wait_state(&c, "ev", |s| s == "watching").await, "watching");
    std::fs::create_dir(d.join("events/later")).unwrap();
    write(
        &d.join("events/later"),
        "2.json",
        b"{\"n\": 40, \"user\": \"ada\", \"extra\": true}\n",
    );
    wait_for(&c, "SELECT * FROM per_user", &["ada|41", "bob|2"]).await;

    // Parquet, watching, declared columns taken by name (a subset, in
    // another order, one the files lack).
    exec(
        &c,
        &format!(
            "CREATE SOURCE pq (score double precision, id bigint NOT NULL, missing text) FROM FILES '{}' (FORMAT PARQUET, WATCH)",
            url("p*.parquet")
        ),
    )
    .await;
    wait_for(&c, "SELECT * FROM pq", &["0.5|1|NULL", "1.5|2|NULL"]).await;
    write(d, "p2.parquet", &parquet(&[(3, "z", 2.5)]));
    wait_for(&c, "SELECT sum(score), count(*) FROM pq", &["4.5|3"]).await;

    // Fed tables refuse writes; dropping the source drops both tables.
    assert_eq!(error(&c, "INSERT INTO pq VALUES (1, 1, 'x')").await.0, "42809");
    assert_eq!(error(&c, "DELETE FROM pq_progress").await.0, "42809");
    exec(&c, "DROP SOURCE pq").await;
    assert_eq!(error(&c, "SELECT * FROM pq_progress").await.0, "42P01");
}

#[tokio::test]
async fn malformed_rows_are_reported_by_file_and_line_and_resumed_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.csv", b"1,one\n2,two\n");
    write(d, "b.csv", b"3,three\n4,four\nfive,5\n6,six\n");
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE nums (n integer NOT NULL, word text) FROM FILES 'file://{}/*.csv' (FORMAT CSV) WATCH",
            d.display()
        ),
    )
    .await;
    let b = format!("file://{}/b.csv", d.display());
    let state = wait_state(&c, "nums", |s| s.starts_with("error")).await;
    assert!(state.starts_with(&format!("error: {b} line 3: ")), "{state}");
    // The rows before the bad one are in; nothing after it.
    assert_eq!(sorted(&c, "SELECT n FROM nums").await, vec!["1", "2", "3", "4"]);
    assert_eq!(
        sorted(
            &c,
            "SELECT file, rows_ingested, complete FROM nums_progress WHERE file LIKE '%b.csv'"
        )
        .await,
        vec![format!("{b}|2|f")]
    );
    // Fixed in place: read on from the bad row, nothing twice.
    write(d, "b.csv", b"3,three\n4,four\n5,five\n6,six\n");
    wait_state(&c, "nums", |s| s == "watching").await;
    assert_eq!(
        sorted(&c, "SELECT n FROM nums").await,
        vec!["1", "2", "3", "4", "5", "6"]
    );
    // A NULL where the column is NOT NULL, and JSON that does not parse.
    write(d, "c.csv", b"7,seven\n,eight\n");
    let state = wait_state(&c, "nums", |s| s.starts_with("error")).await;
    assert!(
        state.ends_with("c.csv line 2: null value in column \"n\" violates not-null constraint"),
        "{state}"
    );
    // A failing file that is removed is no longer an error.
    std::fs::remove_file(d.join("c.csv")).unwrap();
    wait_state(&c, "nums", |s| s == "watching").await;
    write(
        d,
        "x.json",
        b"{\"a\": 1, \"s\": \"ok\"}\n{\"a\": 2, \"s\": \"too long\"}\n",
    );
    write(d, "y.json", b"{\"a\": 3}\n\n{\"a\": 4\n");
    exec(
        &c,
        &format!(
            "CREATE SOURCE js (a bigint, s varchar(2)) FROM FILES 'file://{}/*.json'",
            d.display()
        ),
    )
    .await;
    let state = wait_state(&c, "js", |s| s.starts_with("error")).await;
    assert!(
        state.contains(
            "x.json line 2: value too long for type character varying(2) in column \"s\" (and 1 more files)"
        ),
        "{state}"
    );
    assert_eq!(sorted(&c, "SELECT a FROM js").await, vec!["1", "3"]);
}

#[tokio::test]
async fn exactly_once_across_kill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 20 files of 20,000 rows, a durable step each: a kill lands between
    // files, or between a file's rows and the view's update.
    let (files, per_file) = (20, 20_000);
    for f in 0..files {
        let mut body = String::with_capacity(per_file * 24);
        for i in 0..per_file {
            let id = f * per_file + i;
            body.push_str(&format!("{id},{}\n", id % 97));
        }
        write(d, &format!("part-{f:03}.csv"), body.as_bytes());
    }
    let state = state_dir();
    let path = state.path().to_str().unwrap();
    let mut a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE big (id bigint, k integer) FROM FILES 'file://{}/part-*.csv' (FORMAT CSV);
             CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM big GROUP BY k",
            d.display()
        ),
    )
    .await;
    // Kill once some files are in and others are not.
    wait_while(&c, "SELECT count(*) FROM big_progress WHERE complete", "0").await;
    let at_kill = sorted(&c, "SELECT count(*) FROM big").await;
    a.kill();
    drop(c);
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    wait_state(&c, "big", |s| s == "finished").await;
    let total = (files * per_file).to_string();
    assert_eq!(
        id_span(&c).await,
        vec![format!("{total}|{total}|0|{}", files * per_file - 1)],
        "killed at {at_kill:?} rows"
    );
    assert_eq!(sorted(&c, "SELECT sum(n) FROM per_k").await, vec![total.clone()]);
    assert_eq!(
        sorted(
            &c,
            "SELECT count(*), sum(rows_ingested) FROM big_progress WHERE complete"
        )
        .await,
        vec![format!("{files}|{total}")]
    );
    // A finished once-only source stays finished across a restart, even
    // with new files about.
    write(d, "part-999.csv", b"-1,0\n");
    drop(c);
    drop(a);
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    wait_state(&c, "big", |s| s == "finished").await;
    assert_eq!(sorted(&c, "SELECT count(*) FROM big").await, vec![total]);
}

/// A file of many pieces (the reader fetches 8 MiB at a time): quoted
/// line breaks across piece ends, a `kill -9` in the middle of the file,
/// a bad row in a later piece named by its line, resumed once fixed.
#[tokio::test]
async fn a_large_file_is_read_in_pieces_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = 600_000;
    let bad_at: usize = 550_000;
    // Every 7th row's note spans two lines; a row is ~40 bytes, so the
    // file is ~23 MB: three pieces.
    let body = |bad: bool| {
        let (mut out, mut line, mut bad_line) = (String::new(), 1, 0);
        for id in 0..rows {
            if bad && id == bad_at {
                bad_line = line;
                out.push_str("oops,not a number\n");
                line += 1;
            }
            if id % 7 == 0 {
                out.push_str(&format!("{id},\"note {id}\nsecond line, \"\"quoted\"\"\"\n"));
                line += 2;
            } else {
                out.push_str(&format!("{id},plain note number {id:>12}\n"));
                line += 1;
            }
        }
        (out, bad_line)
    };
    let (broken, bad_line) = body(true);
    assert!(broken.len() > 2 * (8 << 20), "{} bytes", broken.len());
    write(d, "big.csv", broken.as_bytes());
    let state = state_dir();
    let path = state.path().to_str().unwrap();
    let mut a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SOURCE big (id bigint NOT NULL, note text) FROM FILES 'file://{}/big.csv' (FORMAT CSV)",
            d.display()
        ),
    )
    .await;
    // Kill once part of the file is in.
    wait_while(
        &c,
        "SELECT coalesce(sum(rows_ingested), 0) FROM big_progress",
        "0",
    )
    .await;
    a.kill();
    drop(c);
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    let url = format!("file://{}/big.csv", d.display());
    let st = wait_state(&c, "big", |s| s.starts_with("error")).await;
    assert!(
        st.starts_with(&format!("error: {url} line {bad_line}: ")),
        "{st}, want line {bad_line}"
    );
    assert_eq!(
        id_span(&c).await,
        vec![format!("{bad_at}|{bad_at}|0|{}", bad_at - 1)]
    );
    assert_eq!(
        sorted(
            &c,
            "SELECT count(*) FROM big WHERE note LIKE '%second line, \"quoted\"'"
        )
        .await,
        vec![bad_at.div_ceil(7).to_string()]
    );
    // Fixed in place: a restart reads on from the bad row.
    write(d, "big.csv", body(false).0.as_bytes());
    drop(c);
    drop(a);
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    wait_state(&c, "big", |s| s == "finished").await;
    assert_eq!(id_span(&c).await, vec![format!("{rows}|{rows}|0|{}", rows - 1)]);
    assert_eq!(
        sorted(&c, "SELECT rows_ingested, complete FROM big_progress").await,
        vec![format!("{rows}|t")]
    );
}

#[tokio::test]
async fn s3_files_are_read_and_watched() {
    let moto = Moto::start("lake");
    moto.put("lake/in/2024/a.csv", b"k,v\nx,1\ny,2\n");
    moto.put("lake/other/skip.csv", b"k,v\nz,9\n");
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let state = state_dir();
    let s = Server::on_state(state.path().to_str().unwrap(), 2, &env);
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE lake FROM FILES 's3://lake/in/**/*.csv' (FORMAT CSV, HEADER, WATCH);
         CREATE MATERIALIZED VIEW sums AS SELECT sum(v) AS total FROM lake",
    )
    .await;
    wait_for(&c, "SELECT * FROM sums", &["3"]).await;
    moto.put("lake/in/2025/b.csv", b"k,v\nw,40\n");
    wait_for(&c, "SELECT * FROM sums", &["43"]).await;
    assert_eq!(
        sorted(&c, "SELECT file FROM lake_progress").await,
        vec!["s3://lake/in/2024/a.csv", "s3://lake/in/2025/b.csv"]
    );
    // A bucket that does not exist: a clear error at CREATE.
    let (code, message, _) = error(&c, "CREATE SOURCE nope FROM FILES 's3://no-such-bucket/*.csv'").await;
    assert_eq!(code, "58030", "{message}");
}

#[tokio::test]
async fn bad_file_sources_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "bad.parquet", b"not parquet at all");
    write(d, "ok.csv", b"a\n1\n");
    let s = Server::start();
    let c = s.connect().await;
    let at = |p: &str| format!("file://{}/{p}", d.display());
    for (sql, code, needle) in [
        (
            format!("CREATE SOURCE f FROM FILES '{}'", at("none-*.csv")),
            "22023",
            "declare them",
        ),
        (
            format!("CREATE SOURCE f FROM FILES '{}'", at("*.txt")),
            "22023",
            "FORMAT PARQUET | CSV | JSON",
        ),
        (
            format!("CREATE SOURCE f FROM FILES '{}' (FORMAT XML)", at("*.csv")),
            "22023",
            "unknown file format XML",
        ),
        (
            format!(
                "CREATE SOURCE f FROM FILES '{}' (FORMAT JSON, HEADER)",
                at("*.json")
            ),
            "22023",
            "FORMAT CSV only",
        ),
        (
            format!(
                "CREATE SOURCE f FROM FILES '{}' (FORMAT CSV, DELIMITER ';;')",
                at("*.csv")
            ),
            "22023",
            "one character",
        ),
        (
            format!(
                "CREATE SOURCE f FROM FILES '{}' (COMPRESSION 'gzip')",
                at("*.csv")
            ),
            "22023",
            "unknown file source option",
        ),
        (
            "CREATE SOURCE f FROM FILES 'http://example.com/x.csv'".to_string(),
            "22023",
            "file:// or s3://",
        ),
        (
            "CREATE SOURCE f FROM FILES 'file://relative/x.csv'".to_string(),
            "22023",
            "absolute path",
        ),
        (
            format!("CREATE SOURCE f FROM FILES '{}'", at("bad.parquet")),
            "22P04",
            "bad.parquet",
        ),
        (
            format!(
                "CREATE SOURCE f (a int) FROM FILES '{}' (FORMAT CSV) extra",
                at("*.csv")
            ),
            "42601",
            "",
        ),
    ] {
        let (got, message, _) = error(&c, &sql).await;
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(needle), "{sql}: {message}");
    }
    exec(&c, "CREATE TABLE taken_progress (x int)").await;
    assert_eq!(
        error(
            &c,
            &format!(
                "CREATE SOURCE taken FROM FILES '{}' (FORMAT CSV, HEADER)",
                at("ok.csv")
            )
        )
        .await
        .0,
        "42P07"
    );
    // Nothing half-made was left behind by any of them.
    assert_eq!(
        sorted(&c, "SELECT count(*) FROM weir_catalog.sources").await,
        vec!["0"]
    );
    exec(
        &c,
        &format!(
            "CREATE SOURCE ok FROM FILES '{}' (FORMAT CSV, HEADER)",
            at("ok.csv")
        ),
    )
    .await;
    wait_state(&c, "ok", |s| s == "finished").await;
    assert_eq!(sorted(&c, "SELECT a FROM ok").await, vec!["1"]);
}
