//! SQL logic tests: `tests/slt/*.slt` run against the real server over
//! pgwire with the `sqllogictest` crate, each file on a fresh server.
//! `REWRITE=1` rewrites the expected output in place.
//!
//! The third-party SQLite corpus in `../shared/conformance/sqlite` (or
//! `$WEIR_CONFORMANCE`) runs with
//! `cargo test --test slt -- --ignored --nocapture --exact conformance_views`
//! (every query answered one-shot, then also kept as a view) or
//! `... conformance` (one-shot only), its files side by side on servers of
//! their own; it reports how many records pass per file, and fails on any
//! record that fails other than [`POSTGRESQL_REJECTS`] (or on a view stale
//! at the end).

mod common;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use sqllogictest::{Condition, DBOutput, DefaultColumnType, Record, Runner};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The engine labels `skipif`/`onlyif` lines are matched against.
const LABELS: [&str; 2] = ["postgresql", "weir"];

/// Corpus records that record SQLite's answer where PostgreSQL 15 answers
/// with an error, as Weir does: a text or blob literal compared with an
/// integer column (`in1.test`, over an empty table; PostgreSQL: `22P02
/// invalid input syntax for type integer`, and no `bit = integer`
/// operator). Every other record must pass.
const POSTGRESQL_REJECTS: &[&str] = &[
    "SELECT 'hello' IN (SELECT * FROM t1)",
    "SELECT 'hello' NOT IN (SELECT * FROM t1)",
    "SELECT x'303132' IN (SELECT * FROM t1)",
    "SELECT x'303132' NOT IN (SELECT * FROM t1)",
];

/// One connection to Weir, as the logic-test runner's database.
struct Weir {
    client: Client,
    /// Views mode: every query also becomes a materialized view, which must
    /// hold the same rows as the query, then and after every later change.
    /// (The number made so far.)
    views: Option<usize>,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

fn db_error(e: tokio_postgres::Error) -> DbError {
    DbError(match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })
}

/// Render one value the way the logic tests record it.
fn render(value: Option<&str>, ty: &Type) -> String {
    match value {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        // The logic-test corpora record booleans as integers.
        Some(v) if *ty == Type::BOOL => if v == "t" { "1" } else { "0" }.to_string(),
        Some(v) if *ty == Type::FLOAT4 || *ty == Type::FLOAT8 || *ty == Type::NUMERIC => {
            match v.parse::<f64>() {
                Ok(f) if *ty != Type::NUMERIC || v.contains('.') => format!("{f:.3}"),
                _ => v.to_string(),
            }
        }
        Some(v) => v.to_string(),
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for Weir {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        if self.views.is_some()
            && let Some(dropped) = dropped_relation(sql)
        {
            self.drop_views_over(&dropped).await?;
        }
        let output = self.run_once(sql).await?;
        let is_query = sql
            .trim_start()
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"));
        let (Some(views), true, DBOutput::Rows { types, rows }) = (self.views.as_mut(), is_query, &output)
        else {
            return Ok(output);
        };
        let name = format!("corpus_view_{views}");
        // Name the columns: like PostgreSQL, Weir wants distinct names in a
        // view, and the corpus leaves expressions unnamed.
        let columns: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
        self.client
            .batch_execute(&format!(
                "CREATE MATERIALIZED VIEW {name} ({}) AS {sql}",
                columns.join(", ")
            ))
            .await
            .map_err(db_error)?;
        *views += 1;
        // The query's own answer, just taken, is what the view must hold.
        let mut expected = rows.clone();
        expected.sort();
        view_holds(self, &name, expected).await?;
        Ok(output)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "postgresql"
    }
}

impl Weir {
    /// Views mode: the views this harness made over `relation` would make
    /// the corpus's own `DROP` of it fail, as in PostgreSQL. Check each
    /// once more, then drop it first.
    async fn drop_views_over(&mut self, relation: &str) -> Result<(), DbError> {
        let over: Vec<(String, String)> = self
            .client
            .query(
                "SELECT d.relation, r.definition FROM weir_catalog.dependencies d \
                 JOIN weir_catalog.relations r ON r.name = d.relation \
                 WHERE d.depends_on = $1 AND d.relation LIKE 'corpus_view_%'",
                &[&relation],
            )
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (view, definition) in over {
            check_view(self, &view, &view_query(definition)).await?;
            self.client
                .batch_execute(&format!("DROP MATERIALIZED VIEW {view}"))
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }
}

/// The query of a harness view's definition
/// (`CREATE MATERIALIZED VIEW v (c0, ...) AS query`).
fn view_query(definition: String) -> String {
    definition
        .split_once(") AS ")
        .map(|(_, q)| q.to_string())
        .unwrap_or(definition)
}

/// The relation a `DROP VIEW` or `DROP TABLE` statement names, lowercased.
fn dropped_relation(sql: &str) -> Option<String> {
    let sql = sql.to_ascii_lowercase();
    let words: Vec<&str> = sql.split_whitespace().map(|w| w.trim_end_matches(';')).collect();
    match words.as_slice() {
        ["drop", "view" | "table", "if", "exists", name, ..] | ["drop", "view" | "table", name, ..] => {
            Some(name.to_string())
        }
        _ => None,
    }
}

/// The rows of `view` must be the rows of `sql` (as multisets).
async fn check_view(db: &mut Weir, view: &str, sql: &str) -> Result<(), DbError> {
    let expected = sorted_rows(db.run_once(sql).await?);
    view_holds(db, view, expected).await
}

/// The rows of `view` must be `expected` (sorted).
async fn view_holds(db: &mut Weir, view: &str, expected: Vec<Vec<String>>) -> Result<(), DbError> {
    let actual = sorted_rows(db.run_once(&format!("SELECT * FROM {view}")).await?);
    if expected == actual {
        Ok(())
    } else {
        Err(DbError(format!(
            "materialized view differs from the query: {} rows vs {} rows",
            actual.len(),
            expected.len()
        )))
    }
}

fn sorted_rows(output: DBOutput<DefaultColumnType>) -> Vec<Vec<String>> {
    match output {
        DBOutput::Rows { mut rows, .. } => {
            rows.sort();
            rows
        }
        _ => Vec::new(),
    }
}

impl Weir {
    async fn run_once(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let stmt = self.client.prepare(sql).await.map_err(db_error)?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await.map_err(db_error)?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        let mut rows = Vec::new();
        for message in self.client.simple_query(sql).await.map_err(db_error)? {
            if let SimpleQueryMessage::Row(r) = message {
                rows.push((0..r.len()).map(|i| render(r.get(i), &types[i])).collect());
            }
        }
        let column_types = types
            .iter()
            .map(|t| match *t {
                Type::INT2 | Type::INT4 | Type::INT8 => DefaultColumnType::Integer,
                Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DefaultColumnType::FloatingPoint,
                Type::TEXT | Type::VARCHAR => DefaultColumnType::Text,
                _ => DefaultColumnType::Any,
            })
            .collect();
        Ok(DBOutput::Rows {
            types: column_types,
            rows,
        })
    }
}

fn runner(
    server: &common::Server,
    views: bool,
) -> Runner<Weir, impl sqllogictest::MakeConnection<Conn = Weir>> {
    let url = server.url();
    let mut runner = Runner::new(move || {
        let url = url.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(db_error)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Weir {
                client,
                views: views.then_some(0),
            })
        }
    });
    for label in LABELS {
        runner.add_label(label);
    }
    runner
}

fn slt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "slt" || x == "test"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn slt_files_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let files = slt_files(&dir);
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for file in files {
        let server = common::Server::start();
        let mut runner = runner(&server, false);
        if std::env::var("REWRITE").is_ok() {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}", e.display(false));
        }
    }
}

/// Whether a `skipif`/`onlyif` condition leaves out the next record here.
fn skips_us(condition: &Condition) -> bool {
    match condition {
        Condition::OnlyIf { label } => !LABELS.contains(&label.as_str()),
        Condition::SkipIf { label } => LABELS.contains(&label.as_str()),
    }
}

/// The SQLite corpus, one-shot: every record of every file, counting
/// passes instead of stopping at the first failure.
#[tokio::test]
#[ignore = "third-party corpus; run explicitly (see the module docs)"]
async fn conformance() {
    run_corpus(false).await;
}

/// The SQLite corpus with every query also maintained as a materialized
/// view: it must equal the query when created and after every statement
/// that follows in its file.
#[tokio::test]
#[ignore = "third-party corpus; run explicitly (see the module docs)"]
async fn conformance_views() {
    run_corpus(true).await;
}

async fn run_corpus(views: bool) {
    let mode = if views { "views" } else { "one-shot" };
    let dir = std::env::var("WEIR_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/sqlite"));
    let mut files = slt_files(&dir);
    files.extend(slt_files(&dir.join("evidence")));
    assert!(!files.is_empty(), "no corpus at {}", dir.display());
    // `WEIR_CONFORMANCE_FILES=in1,slt_lang` runs only files whose names
    // start with one of these.
    if let Ok(only) = std::env::var("WEIR_CONFORMANCE_FILES") {
        let prefixes: Vec<&str> = only.split(',').collect();
        files.retain(|f| {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            prefixes.iter().any(|p| name.starts_with(p))
        });
    }
    // Each file runs on a server of its own, and a server's coordinator
    // is one busy thread: files run side by side, one per core
    // (`WEIR_CONFORMANCE_JOBS` overrides), largest first so that the
    // longest does not start last.
    let jobs = std::env::var("WEIR_CONFORMANCE_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    files.sort_by_key(|f| std::cmp::Reverse(std::fs::metadata(f).map_or(0, |m| m.len())));
    let mut outcomes: Vec<FileOutcome> = futures::stream::iter(files)
        .map(|file| run_corpus_file(file, views))
        .buffer_unordered(jobs)
        .collect()
        .await;
    outcomes.sort_by(|a, b| a.file.cmp(&b.file));
    let (mut total_pass, mut total, mut total_views, mut total_stale) = (0, 0, 0, 0);
    let mut unexpected: Vec<String> = Vec::new();
    for o in outcomes {
        let name = o.file.file_name().unwrap().to_string_lossy().to_string();
        for shown in &o.shown {
            eprintln!("{}: {shown}", o.file.display());
        }
        println!(
            "{name} ({mode}): {}/{} records pass{}",
            o.pass,
            o.count,
            if views {
                format!(
                    " (each query one-shot and as a view), {} views rechecked at the end, {} stale",
                    o.views, o.stale
                )
            } else {
                String::new()
            }
        );
        total_pass += o.pass;
        total += o.count;
        total_views += o.views;
        total_stale += o.stale;
        unexpected.extend(o.unexpected);
    }
    println!(
        "conformance ({mode}): {total_pass}/{total} records pass{}",
        if views {
            format!(", {total_views} views rechecked at the end, {total_stale} stale")
        } else {
            String::new()
        }
    );
    assert!(
        unexpected.is_empty(),
        "{} corpus records fail ({mode}):\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

/// What one corpus file gave.
struct FileOutcome {
    file: PathBuf,
    pass: usize,
    count: usize,
    /// Views mode: the views checked once more at the end, and those that
    /// no longer equal their query.
    views: usize,
    stale: usize,
    /// The first few failures, as the runner describes them.
    shown: Vec<String>,
    /// Failing records (and stale views) not in [`POSTGRESQL_REJECTS`].
    unexpected: Vec<String>,
}

/// Run every record of `file` on a fresh server, counting passes instead
/// of stopping at the first failure.
async fn run_corpus_file(file: PathBuf, views: bool) -> FileOutcome {
    let text = std::fs::read_to_string(&file).unwrap();
    // The parser does not take trailing comments on condition lines.
    let text: String = text
        .lines()
        .map(
            |l| match (l.starts_with("onlyif") || l.starts_with("skipif"), l.find(" #")) {
                (true, Some(i)) => &l[..i],
                _ => l,
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    let script = format!("hash-threshold 8\ncontrol resultmode valuewise\n{text}\n");
    let records: Vec<Record<DefaultColumnType>> =
        sqllogictest::parse(&script).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let server = common::Server::start();
    let mut runner = runner(&server, views);
    let mut o = FileOutcome {
        file,
        pass: 0,
        count: 0,
        views: 0,
        stale: 0,
        shown: Vec::new(),
        unexpected: Vec::new(),
    };
    // `halt` ends the file for the engines its conditions select, as
    // SQLite's own runner reads it (`onlyif mssql` then `halt`: only
    // there; `skipif sqlite` then `halt`: everywhere but SQLite). The
    // crate halts whatever the conditions, or not at all when records
    // are run one by one.
    let mut conditions: Vec<Condition> = Vec::new();
    for record in records {
        match &record {
            Record::Condition(c) => conditions.push(c.clone()),
            Record::Halt { .. } if conditions.iter().all(|c| !skips_us(c)) => break,
            Record::Comment(_) | Record::Newline => {}
            _ => conditions.clear(),
        }
        let sql = match &record {
            Record::Query { sql, .. } | Record::Statement { sql, .. } => Some(sql.trim().to_string()),
            _ => None,
        };
        let result = runner.run_async(record).await;
        if let Some(sql) = sql {
            o.count += 1;
            match result {
                Ok(_) => o.pass += 1,
                Err(e) => {
                    if o.shown.len() < 3 {
                        o.shown.push(e.display(false).to_string());
                    }
                    if !POSTGRESQL_REJECTS.contains(&sql.as_str()) {
                        o.unexpected.push(format!("{}: {sql}", o.file.display()));
                    }
                }
            }
        }
    }
    if views {
        // After everything that followed them, every view must still
        // equal its query.
        // (A server that died answers nothing more: that is a failure of
        // its own, and the other files still report.)
        let listed = match tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                let listed = client
                    .query(
                        "SELECT name, definition FROM weir_catalog.relations \
                         WHERE kind = 'materialized view' AND name LIKE 'corpus_view_%'",
                        &[],
                    )
                    .await;
                listed.map(|rows| (client, rows))
            }
            Err(e) => Err(e),
        };
        let (client, listed) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                o.unexpected
                    .push(format!("{}: the server stopped answering: {e}", o.file.display()));
                return o;
            }
        };
        let mut db = Weir { client, views: None };
        for row in listed {
            let (name, definition): (String, String) = (row.get(0), row.get(1));
            o.views += 1;
            match check_view(&mut db, &name, &view_query(definition)).await {
                Ok(()) => {}
                Err(_) => {
                    o.stale += 1;
                    o.unexpected
                        .push(format!("{}: view {name} stale at the end", o.file.display()));
                }
            }
        }
    }
    o
}
