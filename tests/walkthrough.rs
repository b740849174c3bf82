//! The README's psql walkthrough, pasted into the real psql client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

/// The first ```sql block of the README after `heading`.
fn walkthrough(heading: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(heading).expect("walkthrough heading");
    let rest = &readme[start..];
    let block = rest.find("```sql\n").expect("sql block") + "```sql\n".len();
    let end = rest[block..].find("```").expect("end of block");
    rest[block..block + end].to_string()
}

/// Paste `sql` into psql against a fresh server; its output.
fn paste(sql: &str) -> String {
    paste_on(&common::Server::start(), sql)
}

/// Paste `sql` into psql against `server`; its output.
fn paste_on(server: &common::Server, sql: &str) -> String {
    let mut psql = Command::new("psql")
        .args([&server.url(), "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed");
    psql.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "psql failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn readme_walkthrough_runs_in_psql() {
    let stdout = paste(&walkthrough("## Five minutes with psql"));
    // The view before and after the writes, as the README promises.
    assert!(
        stdout.contains(" east   |      3 |  137.24 |   99.99"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" east   |      2 |   37.25 |   25.00"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" west   |      2 |  104.99 |   99.99"),
        "{stdout}"
    );
    assert!(stdout.contains("Reduce"), "{stdout}");
}

#[test]
fn readme_load_generator_walkthrough_runs_in_psql() {
    let stdout = paste(&walkthrough("## Live data without any other system"));
    // A second of bids at 1,000 events/s: the hottest auctions are there,
    // and the source reports what it emitted.
    assert!(stdout.contains("(5 rows)"), "{stdout}");
    assert!(
        stdout.contains(" auction_house | load-generator NEXMARK | running |"),
        "{stdout}"
    );
    assert!(stdout.contains("DROP SOURCE"), "{stdout}");
}

#[test]
fn readme_files_walkthrough_runs_in_psql() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    // The README's local directory, and its bucket on a real S3 API.
    let sales = tempfile::tempdir().unwrap();
    std::fs::write(
        sales.path().join("2026-11.csv"),
        "id,region,amount\n1,east,10.5\n2,west,4\n",
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("url", DataType::Utf8, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
    ]));
    let clicks = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![7, 7, 8])),
            Arc::new(StringArray::from(vec!["/a", "/b", "/a"])),
            Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone("+00:00")),
        ],
    )
    .unwrap();
    let mut parquet = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut parquet, schema, None).unwrap();
    w.write(&clicks).unwrap();
    w.close().unwrap();
    let moto = common::Moto::start("lake");
    moto.put("lake/clicks/2026/11/part-0.parquet", &parquet);
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let state = common::state_dir();
    let server = common::Server::on_state(state.path().to_str().unwrap(), 2, &env);

    let sql = walkthrough("## Files: CSV, JSON and Parquet").replace(
        "file:///data/sales",
        &format!("file://{}", sales.path().display()),
    );
    let stdout = paste_on(&server, &sql);
    for line in [
        "files CSV",
        "files PARQUET",
        "s3://lake/clicks/2026/11/part-0.parquet |             3 | t",
        "(2 rows)",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        stdout.contains("| finished |") && stdout.contains("| watching |"),
        "{stdout}"
    );
}
