//! Durable state end to end: restart, `kill -9` under concurrent writes,
//! fencing, and bad objects; against a local directory and against a
//! real S3-compatible server (moto) that the test starts itself.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, error, exec, sorted, state_dir};
use tokio_postgres::Client;

/// A state location and the environment a server needs to reach it.
struct Store {
    url: String,
    env: Vec<(String, String)>,
    /// What keeps the location alive (a temp dir, a moto server).
    _keep: Box<dyn std::any::Any + Send>,
}

impl Store {
    fn local() -> Store {
        let dir = state_dir();
        Store {
            url: dir.path().to_str().unwrap().to_string(),
            env: Vec::new(),
            _keep: Box::new(dir),
        }
    }

    fn start(&self) -> Server {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::on_state(&self.url, 2, &env)
    }

    fn try_start(&self) -> Result<Server, String> {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::try_on_state(&self.url, 2, &env)
    }
}

/// A prefix of bucket `weir` on a fresh moto server.
fn s3(prefix: &str) -> Store {
    let moto = common::Moto::start("weir");
    Store {
        url: format!("s3://weir/{prefix}"),
        env: moto.env(),
        _keep: Box::new(moto),
    }
}

const SETUP: &str = "
    CREATE TABLE customers (id int PRIMARY KEY, name text UNIQUE, region text, since date);
    CREATE TABLE orders (id bigint, customer int, amount numeric(10,2), paid boolean, at timestamp, note text);
    CREATE TABLE empty_one (x double precision);
    INSERT INTO customers VALUES (1, 'ada', 'eu', '2020-01-02'), (2, 'bob', 'us', NULL), (3, 'cy', NULL, '2021-05-06');
    INSERT INTO orders VALUES (1, 1, 10.50, true, '2024-01-01 10:00:00', 'first'),
        (2, 1, 20.00, false, NULL, NULL), (2, 1, 20.00, false, NULL, NULL),
        (3, 2, 5.25, true, '2024-02-03 04:05:06', 'x''y'), (4, 9, 1.00, NULL, NULL, '');
    CREATE VIEW big AS SELECT * FROM orders WHERE amount > 6;
    CREATE OR REPLACE VIEW big AS SELECT * FROM orders WHERE amount > 5;
    CREATE MATERIALIZED VIEW per_customer AS
        SELECT c.name, count(*) AS n, sum(o.amount) AS total
        FROM customers c JOIN orders o ON o.customer = c.id GROUP BY c.name;
    CREATE MATERIALIZED VIEW over_view AS SELECT count(*) AS n FROM big;
    CREATE MATERIALIZED VIEW gone AS SELECT 1 AS one;
    DROP MATERIALIZED VIEW gone;
    UPDATE customers SET region = 'apac' WHERE id = 3;
    DELETE FROM orders WHERE id = 4;
    CREATE UNIQUE INDEX customers_at ON customers (region, since);
    CREATE INDEX dropped ON orders (id);
    CREATE INDEX ON orders (customer, at DESC);
    DROP INDEX dropped;
    CREATE INDEX per_customer_n ON per_customer (n);
";

const QUERIES: &[&str] = &[
    "SELECT * FROM customers",
    "SELECT * FROM orders",
    "SELECT * FROM empty_one",
    "SELECT * FROM big",
    "SELECT * FROM per_customer",
    "SELECT * FROM over_view",
    "SELECT relname, oid::text FROM pg_class WHERE relnamespace = 2200",
    "SELECT name, kind FROM weir_catalog.relations",
    "SELECT indexname, indexdef FROM pg_indexes",
];

async fn answers(c: &Client) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for q in QUERIES {
        out.push(sorted(c, q).await);
    }
    out
}

async fn restart_keeps_everything(store: Store) {
    let mut server = store.start();
    let c = server.connect().await;
    exec(&c, SETUP).await;
    // COPY goes through the same durable path.
    let sink = c
        .copy_in("COPY orders (id, customer, amount) FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from_static(b"5\t2\t7.5\n6\t3\t8\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    let before = answers(&c).await;
    assert_eq!(before[5], vec!["6".to_string()], "over_view after setup");
    assert_eq!(
        before[8],
        vec![
            "customers_at|CREATE UNIQUE INDEX customers_at ON public.customers USING btree (region, since)",
            "customers_name_key|CREATE UNIQUE INDEX customers_name_key ON public.customers USING btree (name)",
            "customers_pkey|CREATE UNIQUE INDEX customers_pkey ON public.customers USING btree (id)",
            "orders_customer_at_idx|CREATE INDEX orders_customer_at_idx ON public.orders USING btree (customer, at DESC)",
            "per_customer_n|CREATE INDEX per_customer_n ON public.per_customer USING btree (n)",
        ],
        "indexes after setup"
    );
    drop(c);
    // A clean stop, then a crash: both restore the same answers.
    assert!(server.terminate().success());
    let mut server = store.start();
    let c = server.connect().await;
    assert_eq!(answers(&c).await, before, "after a clean restart");
    drop(c);
    server.kill();
    let server = store.start();
    let c = server.connect().await;
    assert_eq!(answers(&c).await, before, "after kill -9");
    // Constraints hold over restored rows; new ids do not reuse old ones.
    let (code, _, _) = error(&c, "INSERT INTO customers VALUES (1, 'zed', NULL, NULL)").await;
    assert_eq!(code, "23505");
    let (code, _, _) = error(&c, "INSERT INTO customers VALUES (4, 'ada', NULL, NULL)").await;
    assert_eq!(code, "23505");
    let (code, _, _) = error(&c, "INSERT INTO customers VALUES (4, 'eve', 'eu', '2020-01-02')").await;
    assert_eq!(code, "23505", "a unique index holds over restored rows");
    exec(
        &c,
        "CREATE TABLE later (k int); INSERT INTO customers VALUES (4, 'dee', 'eu', NULL)",
    )
    .await;
    let oids = sorted(&c, "SELECT oid::text FROM pg_class WHERE relnamespace = 2200").await;
    let mut unique = oids.clone();
    unique.dedup();
    assert_eq!(oids, unique, "every relation has its own oid");
    assert_eq!(
        sorted(&c, "SELECT * FROM per_customer").await,
        sorted(
            &c,
            "SELECT c.name, count(*) AS n, sum(o.amount) AS total FROM customers c JOIN orders o ON o.customer = c.id GROUP BY c.name"
        )
        .await
    );
}

#[tokio::test]
async fn restart_keeps_everything_local() {
    restart_keeps_everything(Store::local()).await;
}

#[tokio::test]
async fn restart_keeps_everything_s3() {
    restart_keeps_everything(s3("restart")).await;
}

/// What the test knows of one statement's rows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    Present,
    Absent,
    /// Sent, not acknowledged: after a crash, all of it or none.
    InFlight,
}

/// Rows per inserting statement.
const ROWS: i64 = 3;

/// Check the table against what was acknowledged, then settle in-flight
/// statements to what survived.
async fn check(c: &Client, known: &mut HashMap<i64, Known>) {
    let counts: HashMap<i64, i64> = sorted(c, "SELECT stmt, count(*) FROM w GROUP BY stmt")
        .await
        .into_iter()
        .map(|r| {
            let (s, n) = r.split_once('|').unwrap();
            (s.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    for (stmt, n) in &counts {
        assert!(
            *n == ROWS,
            "statement {stmt} survived in part: {n} of {ROWS} rows"
        );
        assert!(known.contains_key(stmt), "statement {stmt} was never sent");
    }
    for (stmt, k) in known.iter_mut() {
        let present = counts.contains_key(stmt);
        match *k {
            Known::Present => assert!(present, "acknowledged insert {stmt} lost"),
            Known::Absent => assert!(!present, "acknowledged delete of {stmt} lost"),
            Known::InFlight => *k = if present { Known::Present } else { Known::Absent },
        }
    }
    let (view, batch) = common::view_and_batch(
        c,
        "per_stmt",
        "SELECT stmt % 4 AS writer, count(*) AS n, sum(i) AS s FROM w GROUP BY stmt % 4",
    )
    .await;
    assert_eq!(view, batch, "view equals its batch answer");
}

async fn writer(c: Client, id: i64, known: Arc<Mutex<HashMap<i64, Known>>>, mut next: i64, mut seed: u64) {
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mine: Vec<i64> = known
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, k)| *s % 4 == id && **k == Known::Present)
            .map(|(s, _)| *s)
            .collect();
        let (stmt, sql, after) = if seed.is_multiple_of(3) && !mine.is_empty() {
            let s = mine[(seed as usize / 3) % mine.len()];
            (s, format!("DELETE FROM w WHERE stmt = {s}"), Known::Absent)
        } else {
            let s = next;
            next += 4;
            let values: Vec<String> = (0..ROWS).map(|i| format!("({s}, {i})")).collect();
            (
                s,
                format!("INSERT INTO w VALUES {}", values.join(", ")),
                Known::Present,
            )
        };
        known.lock().unwrap().insert(stmt, Known::InFlight);
        if c.simple_query(&sql).await.is_err() {
            // The server died with this statement in flight.
            return;
        }
        known.lock().unwrap().insert(stmt, after);
    }
}

async fn crashes_keep_exactly_the_acknowledged(store: Store, iterations: usize) {
    let server = store.start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE w (stmt bigint, i int);
         CREATE MATERIALIZED VIEW per_stmt AS
            SELECT stmt % 4 AS writer, count(*) AS n, sum(i) AS s FROM w GROUP BY stmt % 4",
    )
    .await;
    drop(c);
    drop(server);
    let known = Arc::new(Mutex::new(HashMap::new()));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut next = 0i64;
    for iteration in 0..iterations {
        let mut server = store.start();
        let c = server.connect().await;
        // The writers are stopped: take the map out while checking.
        let mut settled = std::mem::take(&mut *known.lock().unwrap());
        check(&c, &mut settled).await;
        *known.lock().unwrap() = settled;
        let mut tasks = Vec::new();
        for w in 0..4 {
            let wc = server.connect().await;
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            tasks.push(tokio::spawn(writer(wc, w, known.clone(), next + w, seed | 1)));
        }
        next += 4 * 1_000_000;
        let wait = 30 + (seed >> 33) % 250;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
        let k = known.lock().unwrap();
        eprintln!(
            "iteration {iteration}: killed after {wait} ms; {} statements sent",
            k.len()
        );
    }
    let server = store.start();
    let c = server.connect().await;
    let mut settled = std::mem::take(&mut *known.lock().unwrap());
    check(&c, &mut settled).await;
    assert!(
        settled.values().any(|k| *k == Known::Present),
        "the load wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_keep_exactly_the_acknowledged_local() {
    crashes_keep_exactly_the_acknowledged(Store::local(), 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_keep_exactly_the_acknowledged_s3() {
    crashes_keep_exactly_the_acknowledged(s3("crash"), 20).await;
}

async fn a_second_process_fences_the_first(store: Store) {
    let mut first = store.start();
    let a = first.connect().await;
    exec(
        &a,
        "CREATE TABLE t (k int PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    )
    .await;
    let second = store.start();
    let b = second.connect().await;
    assert_eq!(sorted(&b, "SELECT k FROM t").await, vec!["1", "2"]);
    // The first process's next write finds it fenced: refused, and the
    // process stops with the reason.
    let (code, message, _) = error(&a, "INSERT INTO t VALUES (3)").await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("took over"), "{message}");
    let status = first
        .wait_exit(Duration::from_secs(20))
        .expect("fenced process exits");
    assert!(!status.success());
    exec(&b, "INSERT INTO t VALUES (3)").await;
    assert_eq!(sorted(&b, "SELECT k FROM t").await, vec!["1", "2", "3"]);
}

#[tokio::test]
async fn a_second_process_fences_the_first_local() {
    a_second_process_fences_the_first(Store::local()).await;
}

#[tokio::test]
async fn a_second_process_fences_the_first_s3() {
    a_second_process_fences_the_first(s3("fence")).await;
}

#[tokio::test]
async fn missing_or_corrupt_objects_stop_startup_naming_them() {
    let store = Store::local();
    let dir = std::path::PathBuf::from(&store.url);
    let mut server = store.start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (k int); INSERT INTO t VALUES (1)").await;
    drop(c);
    assert!(server.terminate().success());
    let object = std::fs::read_dir(dir.join("data/1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = object.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(&object, b"garbage").unwrap();
    let err = store.try_start().err().expect("a corrupt object stops startup");
    assert!(err.contains("corrupt") && err.contains(&name), "{err}");
    std::fs::remove_file(&object).unwrap();
    let err = store.try_start().err().expect("a missing object stops startup");
    assert!(err.contains("missing") && err.contains(&name), "{err}");
}

#[tokio::test]
async fn a_table_updated_many_times_stays_small() {
    let store = Store::local();
    let dir = std::path::PathBuf::from(&store.url);
    let server = store.start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE counters (k int PRIMARY KEY, n bigint)").await;
    let values: Vec<String> = (0..100).map(|k| format!("({k}, 0)")).collect();
    exec(&c, &format!("INSERT INTO counters VALUES {}", values.join(","))).await;
    for round in 0..10 {
        for k in 0..100 {
            exec(&c, &format!("UPDATE counters SET n = n + 1 WHERE k = {k}")).await;
        }
        let _ = round;
    }
    assert_eq!(
        sorted(&c, "SELECT count(*), sum(n) FROM counters").await,
        vec!["100|1000"]
    );
    // Compaction runs in the background: give it a moment to catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let objects = std::fs::read_dir(dir.join("data/1")).unwrap().count();
    let bytes: u64 = std::fs::read_dir(dir.join("data/1"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(objects <= 12, "{objects} objects after 1,000 updates");
    // 100 live rows: a few KB, not 1,000 updates' worth of history.
    assert!(bytes < 40_000, "{bytes} bytes after 1,000 updates");
}

/// What the shard of relation `oid` holds, once the server has stopped:
/// rows as `a|b|c`, each repeated by its multiplicity, sorted.
async fn shard_rows(dir: &str, oid: u64) -> Vec<String> {
    let location = weir_persist::Location::open(dir).unwrap();
    let (_, restored) = weir_persist::Persist::open(location).await.unwrap();
    let Some(Some(rows)) = restored.shards.get(&(oid - 16384)) else {
        return Vec::new();
    };
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let formatters: Vec<_> = rows
        .batch
        .columns()
        .iter()
        .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
        .collect();
    let mut out = Vec::new();
    for (i, d) in rows.diffs.iter().enumerate() {
        let line: Vec<String> = formatters.iter().map(|f| f.value(i).to_string()).collect();
        for _ in 0..*d {
            out.push(line.join("|"));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn view_outputs_are_recorded_in_their_shards() {
    let store = Store::local();
    let mut server = store.start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE t (k int, g text);
         CREATE MATERIALIZED VIEW per_g AS SELECT g, count(*) AS n, sum(k) AS s FROM t GROUP BY g;
         INSERT INTO t VALUES (1, 'a'), (2, 'a'), (3, 'b'), (4, NULL);
         UPDATE t SET g = 'c' WHERE k = 3;
         DELETE FROM t WHERE k = 1;",
    )
    .await;
    let oid: u64 = sorted(&c, "SELECT oid::text FROM pg_class WHERE relname = 'per_g'").await[0]
        .parse()
        .unwrap();
    let view = sorted(&c, "SELECT * FROM per_g").await;
    // Recording trails the writes by a commit; give it time, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(c);
    assert!(server.terminate().success());
    assert_eq!(shard_rows(&store.url, oid).await, view);
    // A crash right after a write can keep the change from being
    // recorded; the restart reconciles the shard with the recomputed
    // view (no row counted twice).
    let mut server = store.start();
    let c = server.connect().await;
    exec(&c, "INSERT INTO t VALUES (5, 'a'), (6, 'd')").await;
    server.kill();
    let mut server = store.start();
    let c = server.connect().await;
    let view = sorted(&c, "SELECT * FROM per_g").await;
    assert_eq!(view.len(), 4, "{view:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(c);
    assert!(server.terminate().success());
    assert_eq!(shard_rows(&store.url, oid).await, view);
}
