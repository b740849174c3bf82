//! Every statement of the foundation, over real connections to `weir start`.

mod common;

use common::{Server, error, exec, rows, sorted};

#[tokio::test]
async fn create_insert_select_update_delete() {
    let server = Server::start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE t (k bigint PRIMARY KEY, v text NOT NULL, n numeric(10,2))",
    )
    .await;
    exec(
        &c,
        "INSERT INTO t VALUES (1, 'a', 1.50), (2, 'b', NULL), (3, 'c', 3.25)",
    )
    .await;
    assert_eq!(
        sorted(&c, "SELECT * FROM t").await,
        vec!["1|a|1.50", "2|b|NULL", "3|c|3.25"]
    );
    let n = c
        .execute("UPDATE t SET v = upper(v), n = n * 2 WHERE k >= 2", &[])
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        sorted(&c, "SELECT * FROM t").await,
        vec!["1|a|1.50", "2|B|NULL", "3|C|6.50"]
    );
    let n = c.execute("DELETE FROM t WHERE k = 1", &[]).await.unwrap();
    assert_eq!(n, 1);
    exec(&c, "INSERT INTO t SELECT k + 10, v || '!', n FROM t").await;
    assert_eq!(
        sorted(&c, "SELECT k, v FROM t").await,
        vec!["12|B!", "13|C!", "2|B", "3|C"]
    );
    // A primary key can be updated as long as it stays unique.
    exec(&c, "UPDATE t SET k = k + 100").await;
    assert_eq!(
        sorted(&c, "SELECT k FROM t").await,
        vec!["102", "103", "112", "113"]
    );
}

#[tokio::test]
async fn every_column_type_round_trips_in_text_and_binary() {
    let server = Server::start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE ty (b boolean, s smallint, i integer, l bigint, r real, d double precision, \
         n numeric(12,3), t text, vc varchar(5), by bytea, dt date, ts timestamp, tz timestamptz, iv interval)",
    )
    .await;
    exec(
        &c,
        "INSERT INTO ty VALUES (true, -2, 40000, 5000000000, 1.5, 2.25, -1234.5, 'héllo', 'abc', '\\xdeadbeef', \
         '2024-02-29', '2024-01-02 03:04:05.25', '2024-01-02 03:04:05+00', '1 year 2 months 3 days 04:05:06')",
    )
    .await;
    // Text format, through the simple protocol.
    let text = rows(&c, "SELECT * FROM ty").await;
    let expected = [
        "t",
        "-2",
        "40000",
        "5000000000",
        "1.5",
        "2.25",
        "-1234.500",
        "héllo",
        "abc",
        "\\xdeadbeef",
        "2024-02-29",
        "2024-01-02 03:04:05.25",
        "2024-01-02 03:04:05+00",
        "1 year 2 mons 3 days 04:05:06",
    ];
    assert_eq!(
        text[0].iter().map(|v| v.clone().unwrap()).collect::<Vec<_>>(),
        expected
    );
    // Binary format and type OIDs, through the extended protocol.
    let row = c
        .query_one(
            "SELECT b, s, i, l, r, d, t, vc, by, n::text, dt::text FROM ty",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i16>(1), -2);
    assert_eq!(row.get::<_, i32>(2), 40000);
    assert_eq!(row.get::<_, i64>(3), 5_000_000_000);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert_eq!(row.get::<_, f64>(5), 2.25);
    assert_eq!(row.get::<_, String>(6), "héllo");
    assert_eq!(row.get::<_, String>(7), "abc");
    assert_eq!(row.get::<_, Vec<u8>>(8), vec![0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(row.get::<_, String>(9), "-1234.500");
    assert_eq!(row.get::<_, String>(10), "2024-02-29");
    let types: Vec<String> = c
        .prepare("SELECT * FROM ty")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|col| col.type_().name().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "bool",
            "int2",
            "int4",
            "int8",
            "float4",
            "float8",
            "numeric",
            "text",
            "text",
            "bytea",
            "date",
            "timestamp",
            "timestamptz",
            "interval"
        ]
    );
    // Parameters, bound in binary.
    exec(&c, "CREATE TABLE p (k bigint, s text, f double precision)").await;
    c.execute("INSERT INTO p VALUES ($1, $2, $3)", &[&7i64, &"seven", &7.5f64])
        .await
        .unwrap();
    let row = c
        .query_one("SELECT s, f FROM p WHERE k = $1", &[&7i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "seven");
    assert_eq!(row.get::<_, f64>(1), 7.5);
}

#[tokio::test]
async fn copy_from_stdin_text_and_csv() {
    use futures::SinkExt;
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE c (k bigint, s text, d date)").await;
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tone\t2024-01-01\n2\t\\N\t\\N\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let sink = c
        .copy_in("COPY c (k, s) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"k,s\n3,\"x,y\"\n4,\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(
        sorted(&c, "SELECT * FROM c").await,
        vec!["1|one|2024-01-01", "2|NULL|NULL", "3|x,y|NULL", "4|NULL|NULL"]
    );
    // A bad value rejects the whole COPY with 22P02 and the session goes on.
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"5\tok\t2024-01-01\nnope\tx\t2024-01-01\n",
    ))
    .await
    .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22P02");
    assert!(err.as_db_error().unwrap().message().contains("line 2"));
    assert_eq!(
        rows(&c, "SELECT count(*) FROM c").await[0][0].as_deref(),
        Some("4")
    );
}

#[tokio::test]
async fn views_materialized_views_and_drops() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (k int, v int)").await;
    exec(&c, "INSERT INTO t VALUES (1, 1), (1, 2), (2, 3)").await;
    exec(&c, "CREATE VIEW big AS SELECT k, v FROM t WHERE v > 1").await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS total FROM big GROUP BY k",
    )
    .await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW top AS SELECT k, total FROM per_k WHERE total > 2",
    )
    .await;
    exec(&c, "CREATE VIEW top_plus AS SELECT k, total + 1 AS t1 FROM top").await;
    assert_eq!(sorted(&c, "SELECT * FROM per_k").await, vec!["1|1|2", "2|1|3"]);
    assert_eq!(sorted(&c, "SELECT * FROM top_plus").await, vec!["2|4"]);
    exec(&c, "INSERT INTO t VALUES (1, 5)").await;
    assert_eq!(sorted(&c, "SELECT * FROM top").await, vec!["1|7", "2|3"]);
    // A drop that would orphan a dependent is refused.
    let (code, msg, _) = error(&c, "DROP TABLE t").await;
    assert_eq!(code, "2BP01");
    assert!(msg.contains("because other objects depend on it"), "{msg}");
    let (code, _, _) = error(&c, "DROP MATERIALIZED VIEW per_k").await;
    assert_eq!(code, "2BP01");
    let (code, _, _) = error(&c, "DROP VIEW per_k").await;
    assert_eq!(code, "42809");
    exec(&c, "DROP VIEW top_plus").await;
    exec(&c, "DROP MATERIALIZED VIEW per_k CASCADE").await;
    assert_eq!(error(&c, "SELECT * FROM top").await.0, "42P01");
    exec(&c, "DROP TABLE IF EXISTS nothing_here").await;
    exec(&c, "DROP TABLE t CASCADE").await;
    assert_eq!(sorted(&c, "SHOW TABLES").await, Vec::<String>::new());
    assert_eq!(sorted(&c, "SHOW VIEWS").await, Vec::<String>::new());
    // Names can be reused after a drop.
    exec(&c, "CREATE TABLE t (x text)").await;
    exec(&c, "INSERT INTO t VALUES ('again')").await;
    assert_eq!(sorted(&c, "SELECT * FROM t").await, vec!["again"]);
}

#[tokio::test]
async fn show_and_explain() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (k bigint NOT NULL, v varchar(10))").await;
    exec(&c, "CREATE VIEW v AS SELECT k FROM t").await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW m AS SELECT k, count(*) FROM t GROUP BY k",
    )
    .await;
    assert_eq!(sorted(&c, "SHOW TABLES").await, vec!["t"]);
    assert_eq!(sorted(&c, "SHOW VIEWS").await, vec!["v"]);
    assert_eq!(sorted(&c, "SHOW MATERIALIZED VIEWS").await, vec!["m"]);
    assert_eq!(
        sorted(&c, "SHOW COLUMNS FROM t").await,
        vec!["k|f|bigint", "v|t|character varying(10)"]
    );
    assert_eq!(
        sorted(&c, "SHOW COLUMNS FROM m").await,
        vec!["count|t|bigint", "k|t|bigint"]
    );
    let create = rows(&c, "SHOW CREATE MATERIALIZED VIEW m").await;
    assert_eq!(
        create[0][1].as_deref(),
        Some("CREATE MATERIALIZED VIEW m AS SELECT k, count(*) FROM t GROUP BY k")
    );
    let plan: Vec<String> = rows(&c, "EXPLAIN SELECT k, count(*) FROM t WHERE k > 1 GROUP BY k")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert!(plan.iter().any(|l| l.contains("Reduce accumulable")), "{plan:?}");
    assert!(plan.iter().any(|l| l.contains("Get t")), "{plan:?}");
    assert_eq!(rows(&c, "SHOW server_version").await.len(), 1);
}

#[tokio::test]
async fn errors_have_sqlstates_and_positions_and_the_session_survives() {
    let server = Server::start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE t (k int PRIMARY KEY, v text NOT NULL, s varchar(3))",
    )
    .await;
    let (code, msg, pos) = error(&c, "SELECT * FROM t WHERE").await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("42601", "syntax error at end of input")
    );
    assert!(pos.is_none() || pos == Some(22));
    let (code, msg, pos) = error(&c, "SELEC 1").await;
    assert_eq!((code.as_str(), pos), ("42601", Some(1)));
    assert_eq!(msg, "syntax error at or near \"SELEC\"");
    let (code, msg, pos) = error(&c, "SELECT * FROM missing").await;
    assert_eq!(
        (code.as_str(), msg.as_str(), pos),
        ("42P01", "relation \"missing\" does not exist", Some(15))
    );
    let (code, msg, pos) = error(&c, "SELECT nope FROM t").await;
    assert_eq!(
        (code.as_str(), msg.as_str(), pos),
        ("42703", "column \"nope\" does not exist", Some(8))
    );
    assert_eq!(error(&c, "SELECT k FROM t WHERE v + 1").await.0.as_str(), "42804");
    assert_eq!(error(&c, "SELECT nofunc(1)").await.0, "42883");
    exec(&c, "INSERT INTO t VALUES (1, 'a', 'x')").await;
    let (code, msg, _) = error(&c, "INSERT INTO t VALUES (1, 'b', 'y')").await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "23505",
            "duplicate key value violates unique constraint \"t_pkey\""
        )
    );
    let (code, _, _) = error(&c, "INSERT INTO t VALUES (2, 'b', 'y'), (2, 'c', 'z')").await;
    assert_eq!(code, "23505");
    let (code, msg, _) = error(&c, "INSERT INTO t (k) VALUES (3)").await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "23502",
            "null value in column \"v\" of relation \"t\" violates not-null constraint"
        )
    );
    assert_eq!(
        error(&c, "INSERT INTO t VALUES (4, 'd', 'long')").await.0,
        "22001"
    );
    assert_eq!(error(&c, "SELECT 1 / 0").await.0, "22012");
    assert_eq!(error(&c, "SELECT (SELECT 1 UNION SELECT 2)").await.0, "21000");
    assert_eq!(error(&c, "SELECT 'x'::int").await.0, "22P02");
    assert_eq!(error(&c, "CREATE TABLE t (x int)").await.0, "42P07");
    let (code, msg, _) = error(
        &c,
        "CREATE MATERIALIZED VIEW w AS SELECT t.k, l.k AS lk FROM t, LATERAL (SELECT k FROM t t2 WHERE t2.k > t.k ORDER BY k LIMIT 1) l",
    )
    .await;
    assert_eq!(code, "0A000");
    assert!(msg.contains("LATERAL"), "{msg}");
    let (code, msg, _) = error(
        &c,
        "CREATE MATERIALIZED VIEW w AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT count(*) FROM r) SELECT n FROM r",
    )
    .await;
    assert_eq!(code, "42P19");
    assert!(
        msg.contains("aggregates (in WITH RECURSIVE r) are not allowed"),
        "{msg}"
    );
    assert_eq!(error(&c, "CREATE TABLE x (a int[])").await.0, "0A000");
    // Nothing was lost and the session still works.
    assert_eq!(sorted(&c, "SELECT k, v FROM t").await, vec!["1|a"]);
}

#[tokio::test]
async fn an_erroring_row_poisons_only_its_view() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (a int, b int)").await;
    exec(&c, "INSERT INTO t VALUES (10, 2), (10, 5)").await;
    exec(&c, "CREATE MATERIALIZED VIEW q AS SELECT a / b AS r FROM t").await;
    exec(&c, "CREATE MATERIALIZED VIEW s AS SELECT sum(a) AS total FROM t").await;
    assert_eq!(sorted(&c, "SELECT * FROM q").await, vec!["2", "5"]);
    exec(&c, "INSERT INTO t VALUES (1, 0)").await;
    let (code, msg, _) = error(&c, "SELECT * FROM q").await;
    assert_eq!((code.as_str(), msg.as_str()), ("22012", "division by zero"));
    // Other views and tables keep serving.
    assert_eq!(sorted(&c, "SELECT * FROM s").await, vec!["21"]);
    assert_eq!(sorted(&c, "SELECT count(*) FROM t").await, vec!["3"]);
    // Views built over the bad row: a map of the table (fed the log as
    // it stands) and a map of the failing view both hold the error; a
    // filter that drops the row first does not.
    exec(
        &c,
        "CREATE MATERIALIZED VIEW late AS SELECT a / b + 1 AS r FROM t;
         CREATE MATERIALIZED VIEW doubled AS SELECT r * 2 AS r2 FROM q;
         CREATE MATERIALIZED VIEW guarded AS SELECT a / b AS r FROM t WHERE b <> 0",
    )
    .await;
    for view in ["late", "doubled"] {
        let (code, _, _) = error(&c, &format!("SELECT * FROM {view}")).await;
        assert_eq!(code, "22012", "{view}");
    }
    assert_eq!(sorted(&c, "SELECT * FROM guarded").await, vec!["2", "5"]);
    // Removing the row heals every view.
    exec(&c, "DELETE FROM t WHERE b = 0").await;
    assert_eq!(sorted(&c, "SELECT * FROM q").await, vec!["2", "5"]);
    assert_eq!(sorted(&c, "SELECT * FROM late").await, vec!["3", "6"]);
    assert_eq!(sorted(&c, "SELECT * FROM doubled").await, vec!["10", "4"]);
    // A dropped view's rows stop being kept; the others go on.
    exec(&c, "DROP MATERIALIZED VIEW late; INSERT INTO t VALUES (30, 3)").await;
    assert_eq!(sorted(&c, "SELECT * FROM doubled").await, vec!["10", "20", "4"]);
    assert_eq!(error(&c, "SELECT * FROM late").await.0, "42P01");
}

#[tokio::test]
async fn transactions_and_settings_are_acknowledged() {
    let server = Server::start();
    let c = server.connect().await;
    exec(
        &c,
        "BEGIN; CREATE TABLE t (k int); INSERT INTO t VALUES (1); COMMIT",
    )
    .await;
    exec(&c, "SET application_name = 'x'").await;
    assert_eq!(sorted(&c, "SELECT * FROM t").await, vec!["1"]);
}

/// `weir_catalog.arrangement_sizes` measures every arrangement on every
/// worker when read: a view's dataflow has its own, its join's and its
/// reduction's arrangements, tables have none, and dropping the view
/// forgets them.
#[tokio::test]
async fn arrangement_sizes_follow_the_data() {
    let server = Server::with_workers(2);
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE t (k int PRIMARY KEY, g int);
         CREATE TABLE u (g int, name text);
         INSERT INTO t SELECT x, x % 10 FROM generate_series(1, 10000) AS s(x);
         INSERT INTO u SELECT x, 'group ' || x FROM generate_series(0, 9) AS s(x);
         CREATE MATERIALIZED VIEW per_group AS
           SELECT u.name, count(*) AS n FROM t JOIN u ON t.g = u.g GROUP BY u.name",
    )
    .await;
    let sizes = |relation: &'static str| {
        let c = &c;
        async move {
            rows(
                c,
                &format!(
                    "SELECT operator, count(DISTINCT worker), sum(records), sum(size_bytes), sum(capacity_bytes)
                     FROM weir_catalog.arrangement_sizes WHERE relation = '{relation}'
                     GROUP BY operator ORDER BY operator"
                ),
            )
            .await
            .into_iter()
            .map(|r| {
                let n = |i: usize| r[i].as_deref().unwrap().parse::<i64>().unwrap();
                (r[0].clone().unwrap(), n(1), n(2), n(3), n(4))
            })
            .collect::<Vec<_>>()
        }
    };
    // Sizes are measured when read, not at a time: read the view first so
    // its dataflow has caught up.
    assert_eq!(sorted(&c, "SELECT sum(n) FROM per_group").await, vec!["10000"]);
    // Tables are kept as written, not arranged, keyed or not.
    assert!(sizes("t").await.is_empty());
    assert!(sizes("u").await.is_empty());
    let view = sizes("per_group").await;
    let operators: Vec<&str> = view.iter().map(|v| v.0.as_str()).collect();
    for expected in ["JoinArrangeLeft", "JoinArrangeRight", "Arrange: ReduceTotals"] {
        assert!(operators.contains(&expected), "{operators:?}");
    }
    // The view's output is kept as a log, like a table, not arranged.
    assert!(
        !operators.iter().any(|o| o.contains("per_group")),
        "{operators:?}"
    );
    // The join reads t projected to g: ten distinct rows, each once with
    // multiplicity 1,000.
    let left = view.iter().find(|v| v.0 == "JoinArrangeLeft").unwrap();
    assert_eq!(left.2, 10, "{view:?}");
    // Ten encoded ints with their times and counts: held bytes cover
    // them, and allocated bytes cover what is held.
    assert!((10 * 4..10 * 200).contains(&left.3), "{view:?}");
    assert!(left.4 >= left.3, "{view:?}");
    // A semi-join's distinct matches: t's rows whose g is in u's first five.
    exec(
        &c,
        "CREATE MATERIALIZED VIEW hits AS SELECT k FROM t WHERE g IN (SELECT g FROM u WHERE g < 5)",
    )
    .await;
    assert_eq!(sorted(&c, "SELECT count(*) FROM hits").await, vec!["5000"]);
    let hits = sizes("hits").await;
    let distinct = hits
        .iter()
        .find(|v| v.0 == "JoinHitsLeft")
        .unwrap_or_else(|| panic!("{hits:?}"));
    assert_eq!(distinct.2, 5_000, "{hits:?}");
    assert!(hits.iter().any(|v| v.0 == "Arrange: JoinHitsLeft"), "{hits:?}");
    exec(
        &c,
        "DROP MATERIALIZED VIEW per_group; DROP MATERIALIZED VIEW hits",
    )
    .await;
    assert!(sizes("per_group").await.is_empty());
    assert!(sizes("hits").await.is_empty());
    let left: Vec<Vec<Option<String>>> = rows(
        &c,
        "SELECT operator FROM weir_catalog.arrangement_sizes WHERE operator LIKE 'Join%'",
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
}

/// A `DELETE` or `UPDATE` that pins the primary key reads its rows from
/// the coordinator's key index rather than the workers, without waiting
/// for earlier writes to reach them: it must still see every one of them.
#[tokio::test]
async fn writes_by_key_see_every_earlier_write() {
    let server = Server::start();
    let c = server.connect().await;
    exec(
        &c,
        "CREATE TABLE acct (id bigint PRIMARY KEY, owner text, bal bigint NOT NULL);
         CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n, sum(bal) AS s FROM acct",
    )
    .await;
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, 'o{i}', 0)")).collect();
    exec(&c, &format!("INSERT INTO acct VALUES {}", values.join(", "))).await;
    // Four sessions bump every balance 25 times each, back to back.
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let bump = format!("UPDATE acct SET bal = bal + 1 WHERE id IN ({})", ids.join(", "));
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let s = server.connect().await;
        let bump = bump.clone();
        sessions.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(s.execute(bump.as_str(), &[]).await.unwrap(), 20);
            }
        }));
    }
    for s in sessions {
        s.await.unwrap();
    }
    assert_eq!(sorted(&c, "SELECT n, s FROM total").await, vec!["20|2000"]);
    // The rest of a WHERE still decides among the rows read by key.
    let n = c
        .execute(
            "UPDATE acct SET bal = bal * 2 WHERE id IN (1, 2, 3) AND owner <> 'o2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        c.execute("DELETE FROM acct WHERE id = 4 AND bal = 99", &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        c.execute("DELETE FROM acct WHERE id = 4 AND bal = 100", &[])
            .await
            .unwrap(),
        1
    );
    // A key named twice is one row; a missing key is none.
    assert_eq!(
        c.execute("DELETE FROM acct WHERE id IN (8, 8, 9, 999)", &[])
            .await
            .unwrap(),
        2
    );
    // A changed key is found under its new value at once, not its old.
    exec(&c, "UPDATE acct SET id = id + 100 WHERE id = 5").await;
    assert_eq!(
        c.execute("UPDATE acct SET bal = 7 WHERE id = 105", &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(c.execute("DELETE FROM acct WHERE id = 5", &[]).await.unwrap(), 0);
    // Moving a row onto an existing key is refused and changes nothing.
    assert_eq!(error(&c, "UPDATE acct SET id = 6 WHERE id = 7").await.0, "23505");
    assert_eq!(
        sorted(&c, "SELECT id, bal FROM acct WHERE id IN (6, 7)").await,
        vec!["6|100", "7|100"]
    );
    assert_eq!(
        sorted(&c, "SELECT id, owner, bal FROM acct WHERE id IN (1, 2, 3, 105)").await,
        vec!["105|o5|7", "1|o1|200", "2|o2|100", "3|o3|200"]
    );
    assert_eq!(sorted(&c, "SELECT n, s FROM total").await, vec!["17|1807"]);

    // Text keys, and a composite key (kept, checked, but not read by key).
    exec(
        &c,
        "CREATE TABLE names (n text PRIMARY KEY, v int);
         CREATE TABLE pairs (a text, b int, v int, PRIMARY KEY (a, b));
         INSERT INTO names VALUES ('a', 1), ('bb', 2), ('', 3);
         INSERT INTO pairs VALUES ('x', 1, 0), ('x', 2, 0), ('xy', 1, 0)",
    )
    .await;
    assert_eq!(
        c.execute("UPDATE names SET v = v + 10 WHERE n IN ('', 'bb')", &[])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        sorted(&c, "SELECT n, v FROM names").await,
        vec!["a|1", "bb|12", "|13"]
    );
    assert_eq!(error(&c, "INSERT INTO pairs VALUES ('x', 2, 5)").await.0, "23505");
    exec(&c, "UPDATE pairs SET b = b + 10 WHERE a = 'x'").await;
    exec(&c, "INSERT INTO pairs VALUES ('x', 2, 5)").await;
    assert_eq!(
        error(&c, "INSERT INTO pairs VALUES ('x', 11, 5)").await.0,
        "23505"
    );
    assert_eq!(
        sorted(&c, "SELECT a, b, v FROM pairs").await,
        vec!["xy|1|0", "x|11|0", "x|12|0", "x|2|5"]
    );
}

/// A join of many tables (SQLite's corpus joins 32 at once) is lowered
/// and rendered without exhausting a thread's stack, one-shot and as a
/// materialized view that then follows a change.
#[tokio::test]
async fn a_join_of_many_tables_runs_and_is_maintained() {
    const N: usize = 64;
    let server = Server::start();
    let c = server.connect().await;
    for i in 0..N {
        exec(
            &c,
            &format!(
                "CREATE TABLE t{i} (a{i} int, b{i} int); INSERT INTO t{i} VALUES ({i}, {})",
                i + 1
            ),
        )
        .await;
    }
    // A chain: t0.b0 = t1.a1, t1.b1 = t2.a2, ...
    let from: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
    let on: Vec<String> = (1..N).map(|i| format!("b{} = a{i}", i - 1)).collect();
    let query = format!(
        "SELECT a0, b{} FROM {} WHERE {}",
        N - 1,
        from.join(", "),
        on.join(" AND ")
    );
    let expected = vec![vec![Some("0".to_string()), Some(N.to_string())]];
    assert_eq!(rows(&c, &query).await, expected);
    exec(&c, &format!("CREATE MATERIALIZED VIEW chain AS {query}")).await;
    assert_eq!(rows(&c, "SELECT * FROM chain").await, expected);
    // Break the chain in the middle: the view empties.
    exec(&c, &format!("UPDATE t{} SET a{} = -1", N / 2, N / 2)).await;
    assert_eq!(
        rows(&c, "SELECT * FROM chain").await,
        Vec::<Vec<Option<String>>>::new()
    );
    assert_eq!(rows(&c, &query).await, Vec::<Vec<Option<String>>>::new());
}

/// An expression nested past the limit (`a + a + ... + a`, 100,000 deep)
/// is refused as PostgreSQL refuses one past its stack, `54001`, and the
/// server goes on; one just inside the limit runs, one-shot and as a view.
#[tokio::test]
async fn a_too_deep_expression_is_refused_not_a_crash() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (a int); INSERT INTO t VALUES (1)").await;
    let chain = |n: usize| format!("SELECT {} AS s FROM t", vec!["a"; n].join(" + "));
    for sql in [
        chain(100_000),
        format!("CREATE MATERIALIZED VIEW deep AS {}", chain(1_001)),
    ] {
        let (code, message, _) = error(&c, &sql).await;
        assert_eq!(code, "54001");
        assert!(message.starts_with("stack depth limit exceeded"), "{message}");
    }
    // Just inside the limit: 999 additions are 1,000 levels.
    assert_eq!(rows(&c, &chain(999)).await, vec![vec![Some("999".to_string())]]);
    exec(&c, &format!("CREATE MATERIALIZED VIEW deep AS {}", chain(999))).await;
    exec(&c, "INSERT INTO t VALUES (2)").await;
    assert_eq!(sorted(&c, "SELECT s FROM deep").await, ["1998", "999"]);
}

/// A prepared statement runs the plan bound when it was prepared for as
/// long as the catalog stays as it was, and is bound anew after any DDL;
/// one that reads a system relation is bound at every execution, since
/// the rows of one are taken when it is bound.
#[tokio::test]
async fn prepared_statements_rebind_after_the_catalog_changes() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE p (k bigint PRIMARY KEY, v text)").await;
    exec(&c, "INSERT INTO p VALUES (1, 'a'), (2, 'b')").await;
    let select = c
        .prepare("SELECT k, v FROM p WHERE k >= $1 ORDER BY k")
        .await
        .unwrap();
    let update = c.prepare("UPDATE p SET v = v || $1 WHERE k = $2").await.unwrap();
    let as_text = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| format!("{}|{}", r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect()
    };
    assert_eq!(as_text(c.query(&select, &[&1i64]).await.unwrap()), ["1|a", "2|b"]);
    // The same plan, other values, and the writes in between seen.
    assert_eq!(c.execute(&update, &[&"!", &2i64]).await.unwrap(), 1);
    exec(&c, "INSERT INTO p VALUES (3, 'c')").await;
    assert_eq!(
        as_text(c.query(&select, &[&2i64]).await.unwrap()),
        ["2|b!", "3|c"]
    );
    // The table replaced by one of another shape: the statement is bound
    // to the new one (as PostgreSQL replans), not run with the old plan.
    exec(&c, "DROP TABLE p").await;
    exec(&c, "CREATE TABLE p (v text, k bigint, w int)").await;
    exec(&c, "INSERT INTO p VALUES ('x', 5, 0)").await;
    assert_eq!(as_text(c.query(&select, &[&0i64]).await.unwrap()), ["5|x"]);
    assert_eq!(c.execute(&update, &[&"?", &5i64]).await.unwrap(), 1);
    assert_eq!(as_text(c.query(&select, &[&0i64]).await.unwrap()), ["5|x?"]);
    // Gone: the error is the one binding gives, at execution.
    exec(&c, "DROP TABLE p").await;
    let e = c.query(&select, &[&0i64]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01", "{e:?}");
    // A system relation's rows are read at each execution, though no DDL
    // came between.
    exec(&c, "CREATE TABLE s (g int, x int)").await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW sg AS SELECT g, count(DISTINCT x) FROM s GROUP BY g",
    )
    .await;
    let arranged = c
        .prepare("SELECT coalesce(sum(records), 0)::bigint FROM weir_catalog.arrangement_sizes WHERE relation = 'sg'")
        .await
        .unwrap();
    let count = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i64>(0);
    let before = count(c.query(&arranged, &[]).await.unwrap());
    exec(
        &c,
        "INSERT INTO s SELECT x % 7, x FROM generate_series(1, 100) AS t(x)",
    )
    .await;
    // Sizes are measured when read: read the view first, so that its
    // dataflow has caught up.
    assert_eq!(sorted(&c, "SELECT count(*) FROM sg").await, ["7"]);
    let after = count(c.query(&arranged, &[]).await.unwrap());
    assert!(after > before, "{before} records arranged, then {after}");
}
