//! PostgreSQL as an upstream: secrets and connections, validated against a
//! throwaway PostgreSQL server the test starts itself.

mod common;

use common::pg::Postgres;
use common::{Server, error, exec, free_port, sorted, state_dir};

fn connection_sql(name: &str, port: u16, user: &str, secret: &str) -> String {
    format!(
        "CREATE CONNECTION {name} TO POSTGRES (HOST '127.0.0.1', PORT {port}, USER '{user}', PASSWORD SECRET {secret}, DATABASE 'postgres', SSL MODE 'disable')"
    )
}

/// A Weir server on a fresh state with the connection `pg` to `pg` (as
/// `postgres`), then `then` run.
async fn weir_with_connection(
    pg: &Postgres,
    workers: usize,
    then: &str,
) -> (Server, tokio_postgres::Client, tempfile::TempDir) {
    let dir = state_dir();
    let server = Server::on_state(dir.path().to_str().unwrap(), workers, &[]);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SECRET pw AS 'postgres'; {}; {then}",
            connection_sql("pg", pg.port, "postgres", "pw")
        ),
    )
    .await;
    (server, c, dir)
}

#[tokio::test]
async fn connections_are_validated_and_secrets_never_shown() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE ROLE plain LOGIN PASSWORD 'plainpw';
         CREATE ROLE repl LOGIN REPLICATION PASSWORD 'replpw';",
    )
    .await
    .unwrap();
    let dir = state_dir();
    let state = dir.path().to_str().unwrap();
    let mut server = Server::on_state(state, 1, &[]);
    let c = server.connect().await;
    exec(
        &c,
        "CREATE SECRET pw AS 'postgres'; CREATE SECRET bad AS 'nope';
         CREATE SECRET plainpw AS 'plainpw'; CREATE SECRET replpw AS 'replpw'",
    )
    .await;

    // Every way a connection can be wrong, each with its SQLSTATE and fix.
    let (code, message, _) = error(&c, &connection_sql("x", free_port(), "postgres", "pw")).await;
    assert_eq!(code, "08001", "{message}");
    assert!(
        message.contains("cannot connect to PostgreSQL at 127.0.0.1"),
        "{message}"
    );
    let (code, message, _) = error(&c, &connection_sql("x", pg.port, "postgres", "bad")).await;
    assert_eq!(code, "28P01", "{message}");
    assert!(!message.contains("nope"), "the secret leaked: {message}");
    let (code, message, _) = error(&c, &connection_sql("x", pg.port, "plain", "plainpw")).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("42501", "user \"plain\" may not start replication")
    );
    let (code, _, _) = error(&c, &connection_sql("x", pg.port, "postgres", "missing")).await;
    assert_eq!(code, "42704");
    let (code, message, _) = error(
        &c,
        "CREATE CONNECTION x TO POSTGRES (HOST 'h', USER 'u', PASSWORD SECRET pw, SSL MODE 'sometimes')",
    )
    .await;
    assert_eq!(code, "22023", "{message}");
    let (code, _, position) = error(&c, "CREATE CONNECTION x TO MYSQL (HOST 'h')").await;
    assert_eq!((code.as_str(), position.is_some()), ("42601", true));
    let replica = Postgres::with_wal_level("replica");
    let (code, message, _) = error(&c, &connection_sql("x", replica.port, "postgres", "pw")).await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("wal_level = replica"), "{message}");
    drop(replica);

    // Good ones: a superuser and a role with REPLICATION.
    exec(&c, &connection_sql("pg", pg.port, "postgres", "pw")).await;
    exec(&c, &connection_sql("pg_repl", pg.port, "repl", "replpw")).await;
    let (code, _, _) = error(&c, &connection_sql("pg", pg.port, "postgres", "pw")).await;
    assert_eq!(code, "42710");
    exec(&c, &connection_sql("IF NOT EXISTS pg", pg.port, "postgres", "pw")).await;
    assert_eq!(
        sorted(&c, "SHOW CONNECTIONS").await,
        vec!["pg_repl|postgres", "pg|postgres"]
    );
    let secrets = sorted(&c, "SHOW SECRETS").await;
    assert_eq!(secrets, vec!["bad", "plainpw", "pw", "replpw"]);

    // A source over a publication that does not exist says so.
    let (code, message, _) = error(
        &c,
        "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'nope') FOR ALL TABLES",
    )
    .await;
    assert_eq!(code, "42704", "{message}");
    assert!(
        message.contains("publication \"nope\" does not exist upstream"),
        "{message}"
    );
    // A table without a usable replica identity is refused, naming it.
    up.batch_execute(
        "CREATE TABLE keyless (x int); CREATE PUBLICATION p2 FOR TABLE keyless;
         CREATE TABLE keyed (x int PRIMARY KEY); CREATE PUBLICATION p3 FOR TABLE keyed;",
    )
    .await
    .unwrap();
    let (code, message, _) = error(
        &c,
        "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p2') FOR ALL TABLES",
    )
    .await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("public.keyless"), "{message}");
    let (code, message, _) = error(
        &c,
        "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p3') FOR TABLES (public.other)",
    )
    .await;
    assert_eq!(code, "42704", "{message}");
    assert!(message.contains("public.other"), "{message}");

    // A secret a connection uses cannot go alone.
    let (code, message, _) = error(&c, "DROP SECRET replpw").await;
    assert_eq!(code, "2BP01", "{message}");
    exec(&c, "DROP SECRET bad; DROP SECRET IF EXISTS nothing").await;
    let (code, _, _) = error(&c, "DROP CONNECTION nothing").await;
    assert_eq!(code, "42704");

    // Secrets and connections are durable; replaying them does not need
    // the upstream.
    drop(c);
    assert!(server.terminate().success());
    drop(up);
    drop(pg);
    let server = Server::on_state(state, 1, &[]);
    let c = server.connect().await;
    assert_eq!(
        sorted(&c, "SHOW CONNECTIONS").await,
        vec!["pg_repl|postgres", "pg|postgres"]
    );
    assert_eq!(sorted(&c, "SHOW SECRETS").await, vec!["plainpw", "pw", "replpw"]);
    exec(&c, "DROP SECRET replpw CASCADE").await;
    assert_eq!(sorted(&c, "SHOW CONNECTIONS").await, vec!["pg|postgres"]);
}

/// Rows of `sql` from a client (Weir or upstream) as sorted text.
async fn upstream_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    common::sorted(client, sql).await
}

/// Wait until Weir answers `sql` as upstream does.
async fn converge(weir: &tokio_postgres::Client, up: &tokio_postgres::Client, sql: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let want = upstream_rows(up, sql).await;
        let got = sorted(weir, sql).await;
        if got == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            let sources = sorted(weir, "SHOW SOURCES").await;
            panic!("{sql}: Weir has {got:?}, upstream {want:?}; sources: {sources:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn snapshot_then_stream_exactly_once_across_restarts() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric(10,2), note text);
         CREATE TABLE events (k int, v text);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO orders SELECT g, 'c' || (g % 3), g * 1.25, CASE WHEN g % 2 = 0 THEN 'tab\there' END FROM generate_series(1, 100) g;
         INSERT INTO events VALUES (1, 'a'), (1, 'a'), (2, NULL);
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let dir = state_dir();
    let state = dir.path().to_str().unwrap();
    let mut server = Server::on_state(state, 2, &[]);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SECRET pw AS 'postgres'; {};
             CREATE SOURCE shop FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR ALL TABLES;
             CREATE MATERIALIZED VIEW per_customer AS
                SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer",
            connection_sql("pg", pg.port, "postgres", "pw")
        ),
    )
    .await;
    let per_customer = "SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer";
    converge(&c, &up, "SELECT * FROM orders").await;
    converge(&c, &up, "SELECT * FROM events").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM per_customer").await,
        upstream_rows(&up, per_customer).await
    );
    assert_eq!(
        sorted(
            &c,
            "SELECT name, connection, publication, tables, state, snapshot_rows, snapshot_total, lsn_committed <> '0/0'
             FROM weir_catalog.sources"
        )
        .await,
        vec!["shop|pg|p|events, orders|streaming|103|103|t"]
    );

    // Streaming: every kind of change, one transaction landing at once.
    up.batch_execute(
        "BEGIN;
         INSERT INTO orders VALUES (101, 'c9', 9.99, NULL);
         UPDATE orders SET amount = amount + 1 WHERE id = 2;
         UPDATE orders SET id = 1000 WHERE id = 3;
         DELETE FROM orders WHERE id = 4;
         INSERT INTO events VALUES (3, 'x');
         DELETE FROM events WHERE k = 2;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(&c, &up, "SELECT * FROM orders").await;
    converge(&c, &up, "SELECT * FROM events").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM per_customer").await,
        upstream_rows(&up, per_customer).await
    );
    let (code, message, _) = error(&c, "INSERT INTO orders VALUES (5000, 'x', 1, NULL)").await;
    assert_eq!(code, "42809", "{message}");

    // A crash: on restart the source resumes after its durable position,
    // neither losing nor repeating changes made meanwhile.
    drop(c);
    server.kill();
    up.batch_execute(
        "INSERT INTO orders VALUES (102, 'c1', 1, 'while down');
         UPDATE orders SET note = 'changed' WHERE id = 10;
         TRUNCATE events;
         INSERT INTO events VALUES (7, 'after truncate');",
    )
    .await
    .unwrap();
    let server = Server::on_state(state, 2, &[]);
    let c = server.connect().await;
    converge(&c, &up, "SELECT * FROM orders").await;
    converge(&c, &up, "SELECT * FROM events").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM per_customer").await,
        upstream_rows(&up, per_customer).await
    );
    let shown = sorted(&c, "SHOW SOURCES").await;
    assert_eq!(shown, vec!["shop|postgres|pg|p|streaming"]);
    // Caught up: no lag, and the changes counted.
    let status = sorted(
        &c,
        "SELECT lag_bytes, lag_ms, rows_ingested > 0 FROM weir_catalog.sources",
    )
    .await;
    assert_eq!(status, vec!["0|0|t"]);

    // Dropping the source needs CASCADE for the view, and removes the slot.
    let (code, _, _) = error(&c, "DROP SOURCE shop").await;
    assert_eq!(code, "2BP01");
    exec(&c, "DROP SOURCE shop CASCADE").await;
    assert_eq!(sorted(&c, "SHOW SOURCES").await, Vec::<String>::new());
    let (code, _, _) = error(&c, "SELECT * FROM orders").await;
    assert_eq!(code, "42P01");
    assert_eq!(
        upstream_rows(&up, "SELECT count(*) FROM pg_replication_slots").await,
        vec!["0"]
    );
}

#[tokio::test]
async fn common_types_replicate_faithfully() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (
            id bigint PRIMARY KEY, b boolean, i2 smallint, i4 integer, f4 real, f8 double precision,
            n numeric(12,3), t text, vc varchar(10), d date, ts timestamp, tstz timestamptz,
            iv interval, u uuid, j json, jb jsonb, by bytea, arr int[], m mood, big text);
         INSERT INTO t VALUES (1, true, -2, 40000, 1.5, 2.25, 123.456, 'x\ty\nz\\\\w', 'short',
            '2024-02-29', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05+02', '1 day 02:03:04',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null}', '\\x00ff10',
            '{1,2,3}', 'happy', repeat('toast', 5000));
         INSERT INTO t (id) VALUES (2);
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let (_server, c, _dir) = weir_with_connection(
        &pg,
        1,
        "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR ALL TABLES",
    )
    .await;
    // Columns Weir has no type for arrive as text, in PostgreSQL's spelling.
    let cols = "id, b, i2, i4, f4, f8, n, t, vc, d, ts, iv, u::text, j::text, jb::text, by, arr::text, m::text, length(big)";
    let q = format!("SELECT {cols} FROM t");
    converge(&c, &up, &q).await;
    // tstz compared as an instant.
    converge(&c, &up, "SELECT id, extract(epoch from tstz)::bigint FROM t").await;
    // An update that leaves the TOASTed column alone keeps its value.
    up.batch_execute("UPDATE t SET i4 = i4 + 1 WHERE id = 1; UPDATE t SET big = 'small' WHERE id = 2")
        .await
        .unwrap();
    converge(&c, &up, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_upstream_restarts_lose_and_repeat_nothing() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TABLE w (txn bigint, i int, v bigint, PRIMARY KEY (txn, i));
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let dir = state_dir();
    let state = dir.path().to_str().unwrap().to_string();
    let server = Server::on_state(&state, 2, &[]);
    let c = server.connect().await;
    exec(
        &c,
        &format!(
            "CREATE SECRET pw AS 'postgres'; {};
             CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR ALL TABLES;
             CREATE MATERIALIZED VIEW per_txn AS SELECT txn, count(*) AS n, sum(v) AS s FROM w GROUP BY txn",
            connection_sql("pg", pg.port, "postgres", "pw")
        ),
    )
    .await;
    drop(c);
    drop(server);
    // The upstream load: transactions of three inserts, and updates of
    // earlier rows, as fast as one client goes.
    let load_up = pg.connect().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_load = stop.clone();
    let load = tokio::spawn(async move {
        let mut txn = 0i64;
        while !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
            txn += 1;
            let sql = format!(
                "BEGIN; INSERT INTO w VALUES ({txn}, 0, 1), ({txn}, 1, 2), ({txn}, 2, 3);
                 UPDATE w SET v = v + 10 WHERE txn = {} ; COMMIT;",
                txn / 2
            );
            // The upstream restarts once: a failed transaction is retried.
            if load_up.batch_execute(&sql).await.is_err() {
                return txn;
            }
        }
        txn
    });
    for round in 0..6 {
        let mut server = Server::on_state(&state, 2, &[]);
        let c = server.connect().await;
        // Every transaction lands whole: no view ever shows part of one.
        for _ in 0..5 {
            let partial = sorted(&c, "SELECT txn FROM per_txn WHERE n <> 3").await;
            assert!(partial.is_empty(), "partial transactions visible: {partial:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if round == 1 {
            // A column added under load: the table's next version, made
            // while Weir is killed over and over.
            let admin = pg.connect().await;
            admin
                .batch_execute("ALTER TABLE w ADD COLUMN extra int DEFAULT 1")
                .await
                .unwrap();
        }
        if round == 3 {
            pg.restart();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 + 37 * round)).await;
        server.kill();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 10, "the load ran ({sent} transactions)");
    let server = Server::on_state(&state, 2, &[]);
    let c = server.connect().await;
    let up = pg.connect().await;
    converge(&c, &up, "SELECT * FROM w").await;
    converge(
        &c,
        &up,
        "SELECT txn, count(*) AS n, sum(v) AS s FROM w GROUP BY txn",
    )
    .await;
    assert_eq!(
        sorted(&c, "SELECT * FROM per_txn").await,
        upstream_rows(&up, "SELECT txn, count(*) AS n, sum(v) AS s FROM w GROUP BY txn").await
    );
}

#[tokio::test]
async fn upstream_schema_changes_are_reported_not_applied_wrong() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int, w text);
         CREATE TABLE b (id int PRIMARY KEY, v int);
         INSERT INTO a VALUES (1, 1, 'x'); INSERT INTO b VALUES (1, 1);
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let (_server, c, _dir) = weir_with_connection(
        &pg,
        1,
        "CREATE SOURCE sa FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR TABLES (a);
         CREATE SOURCE sb FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR TABLES (b)",
    )
    .await;
    converge(&c, &up, "SELECT * FROM a").await;
    converge(&c, &up, "SELECT * FROM b").await;
    // A dropped column and a retyped one: each source stops with an error
    // naming table and column, keeping what it had ingested.
    up.batch_execute(
        "ALTER TABLE a DROP COLUMN w; INSERT INTO a VALUES (2, 2);
         ALTER TABLE b ALTER COLUMN v TYPE text; INSERT INTO b VALUES (2, 'two');",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let states = sorted(&c, "SELECT name, state FROM weir_catalog.sources").await;
        if states.iter().all(|s| s.contains("error")) {
            assert!(
                states[0].contains("public.a") && states[0].contains("\"w\""),
                "{states:?}"
            );
            assert!(
                states[1].contains("public.b") && states[1].contains("\"v\" changed type"),
                "{states:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sorted(&c, "SELECT * FROM a").await, vec!["1|1|x"]);
    assert_eq!(sorted(&c, "SELECT * FROM b").await, vec!["1|1"]);
}

#[tokio::test]
async fn upstream_added_columns_appear_and_old_views_keep_theirs() {
    let pg = Postgres::start();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v int);
         CREATE TABLE f (k int, v text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO a VALUES (1, 1), (2, 2); INSERT INTO f VALUES (1, 'one'), (1, 'one'), (2, 'two');
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let (mut server, c, dir) = weir_with_connection(
        &pg,
        2,
        "CREATE SOURCE s FROM POSTGRES CONNECTION pg (PUBLICATION 'p') FOR ALL TABLES;
         CREATE MATERIALIZED VIEW old_a AS SELECT * FROM a;
         CREATE VIEW old_f AS SELECT * FROM f;
         CREATE MATERIALIZED VIEW sums AS SELECT sum(v) AS s, count(*) AS n FROM a",
    )
    .await;
    let state = dir.path().to_str().unwrap().to_string();
    converge(&c, &up, "SELECT * FROM a").await;
    converge(&c, &up, "SELECT * FROM f").await;

    // Columns added upstream: without a default (existing rows NULL), with
    // a constant one (existing rows take it), under REPLICA IDENTITY FULL
    // too; changes before and after in one stream.
    up.batch_execute(
        "INSERT INTO a VALUES (5, 5);
         ALTER TABLE a ADD COLUMN note text;
         ALTER TABLE a ADD COLUMN score int NOT NULL DEFAULT 7;
         INSERT INTO a VALUES (3, 3, 'three', 9);
         UPDATE a SET note = 'one' WHERE id = 1;
         ALTER TABLE f ADD COLUMN extra int DEFAULT 5;
         DELETE FROM f WHERE k = 2;
         INSERT INTO f VALUES (9, 'nine', 10);
         UPDATE f SET extra = 6 WHERE k = 1;",
    )
    .await
    .unwrap();
    converge(&c, &up, "SELECT * FROM a").await;
    converge(&c, &up, "SELECT * FROM f").await;
    // Views created before keep their columns and stay current.
    converge(&c, &up, "SELECT id, v FROM a").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM old_a").await,
        upstream_rows(&up, "SELECT id, v FROM a").await
    );
    assert_eq!(
        sorted(&c, "SELECT * FROM old_f").await,
        upstream_rows(&up, "SELECT k, v FROM f").await
    );
    assert_eq!(
        sorted(&c, "SELECT * FROM sums").await,
        upstream_rows(&up, "SELECT sum(v) AS s, count(*) AS n FROM a").await
    );
    // A materialized view over a view created before still gets that
    // view's columns.
    exec(&c, "CREATE MATERIALIZED VIEW over_old_f AS SELECT * FROM old_f").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM over_old_f").await,
        upstream_rows(&up, "SELECT k, v FROM f").await
    );
    // A view created now sees the new columns; the catalog shows them.
    exec(&c, "CREATE MATERIALIZED VIEW new_a AS SELECT * FROM a").await;
    assert_eq!(
        sorted(&c, "SELECT * FROM new_a").await,
        upstream_rows(&up, "SELECT * FROM a").await
    );
    assert_eq!(
        sorted(
            &c,
            "SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns WHERE table_name = 'a'"
        )
        .await,
        vec!["id integer NO", "note text YES", "score integer NO", "v integer YES"]
    );

    // A crash, and changes while Weir is down: every version comes back
    // and resumes exactly once.
    drop(c);
    server.kill();
    up.batch_execute(
        "UPDATE a SET score = 1, v = 20 WHERE id = 2; DELETE FROM a WHERE id = 3;
         INSERT INTO f VALUES (10, 'ten', DEFAULT); DELETE FROM f WHERE k = 1;",
    )
    .await
    .unwrap();
    let server = Server::on_state(&state, 2, &[]);
    let c = server.connect().await;
    // A second column for f, in a transaction of its own: a third version.
    up.batch_execute("ALTER TABLE f ADD COLUMN g text").await.unwrap();
    up.batch_execute("INSERT INTO f VALUES (11, 'eleven', 1, 'g')")
        .await
        .unwrap();
    converge(&c, &up, "SELECT * FROM a").await;
    converge(&c, &up, "SELECT * FROM f").await;
    for (view, upstream) in [
        ("old_a", "SELECT id, v FROM a"),
        ("old_f", "SELECT k, v FROM f"),
        ("over_old_f", "SELECT k, v FROM f"),
        ("new_a", "SELECT * FROM a"),
        ("sums", "SELECT sum(v) AS s, count(*) AS n FROM a"),
    ] {
        converge(&c, &up, upstream).await;
        assert_eq!(
            sorted(&c, &format!("SELECT * FROM {view}")).await,
            upstream_rows(&up, upstream).await,
            "{view}"
        );
    }

    // A volatile default rewrote the table upstream: the old rows' values
    // are not in the stream, so the source stops, naming the column, and
    // keeps what it has.
    up.batch_execute(
        "ALTER TABLE a ADD COLUMN at timestamptz DEFAULT clock_timestamp();
         INSERT INTO a (id, v) VALUES (30, 30);",
    )
    .await
    .unwrap();
    let stopped = common::wait_state(&c, "s", |s| s.contains("error")).await;
    assert!(
        stopped.contains("\"at\"") && stopped.contains("volatile"),
        "{stopped}"
    );
    assert_eq!(
        sorted(&c, "SELECT * FROM old_a").await,
        upstream_rows(&up, "SELECT id, v FROM a WHERE id <> 30").await
    );

    // Dropping the source drops every version of its tables.
    exec(&c, "DROP SOURCE s CASCADE").await;
    let (code, _, _) = error(&c, "SELECT * FROM a").await;
    assert_eq!(code, "42P01");
    assert_eq!(
        upstream_rows(&up, "SELECT count(*) FROM pg_replication_slots").await,
        vec!["0"]
    );
    // And nothing of them comes back after a restart.
    drop(c);
    drop(server);
    let server = Server::on_state(&state, 2, &[]);
    let c = server.connect().await;
    assert_eq!(sorted(&c, "SHOW SOURCES").await, Vec::<String>::new());
    exec(&c, "CREATE TABLE a (x int)").await;
}

#[tokio::test]
async fn tls_modes_are_honoured() {
    let (pg, ca) = Postgres::with_ssl();
    let up = pg.connect().await;
    up.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t VALUES (1, 'before');
         CREATE PUBLICATION p FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let plain = Postgres::start();
    let server = Server::on_state(state_dir().path().to_str().unwrap(), 1, &[]);
    let c = server.connect().await;
    let connection = |name: &str, host: &str, port: u16, ssl: &str| {
        format!(
            "CREATE CONNECTION {name} TO POSTGRES (HOST '{host}', PORT {port}, USER 'postgres', PASSWORD SECRET pw, {ssl})"
        )
    };
    exec(
        &c,
        &format!(
            "CREATE SECRET pw AS 'postgres'; CREATE SECRET ca AS '{ca}'; CREATE SECRET not_a_ca AS 'hello';"
        ),
    )
    .await;

    // `require` encrypts without checking the certificate.
    exec(&c, &connection("enc", "127.0.0.1", pg.port, "SSL MODE 'require'")).await;
    // `verify-full` checks the chain against the given CA and the name.
    exec(
        &c,
        &connection(
            "verified",
            "localhost",
            pg.port,
            "SSL MODE 'verify-full', SSL CERTIFICATE AUTHORITY SECRET ca",
        ),
    )
    .await;
    // Each refusal: its SQLSTATE and what the message must say.
    let refused = |sql: String, code: &'static str, says: &'static str| {
        let c = &c;
        async move {
            let (got, message, _) = error(c, &sql).await;
            assert_eq!(got, code, "{message}");
            assert!(message.contains(says), "{message}");
        }
    };
    // The same with the public web's roots: the throwaway CA is not one.
    refused(
        connection("x", "localhost", pg.port, "SSL MODE 'verify-full'"),
        "08001",
        "TLS with PostgreSQL at localhost",
    )
    .await;
    // A server without TLS cannot satisfy `require`.
    refused(
        connection("x", "127.0.0.1", plain.port, "SSL MODE 'require'"),
        "08001",
        "does not support TLS",
    )
    .await;
    // A CA that is not PEM, or one given without verification.
    refused(
        connection(
            "x",
            "localhost",
            pg.port,
            "SSL MODE 'verify-full', SSL CERTIFICATE AUTHORITY SECRET not_a_ca",
        ),
        "22023",
        "must be PEM",
    )
    .await;
    refused(
        connection(
            "x",
            "localhost",
            pg.port,
            "SSL MODE 'require', SSL CERTIFICATE AUTHORITY SECRET ca",
        ),
        "22023",
        "only with SSL MODE 'verify-full'",
    )
    .await;

    // Snapshot and stream over a verified connection.
    exec(
        &c,
        "CREATE SOURCE s FROM POSTGRES CONNECTION verified (PUBLICATION 'p') FOR ALL TABLES",
    )
    .await;
    up.batch_execute("INSERT INTO t VALUES (2, 'after'); UPDATE t SET v = 'changed' WHERE id = 1")
        .await
        .unwrap();
    converge(&c, &up, "SELECT id, v FROM t").await;
    let ssl: Vec<String> = sorted(
        &up,
        "SELECT ssl::text FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = 'weir' OR backend_type = 'walsender'",
    )
    .await;
    assert!(!ssl.is_empty() && ssl.iter().all(|s| s == "true"), "{ssl:?}");
}
