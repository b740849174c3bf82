//! Incremental maintenance, checked against the batch answer; SUBSCRIBE;
//! concurrent writers and readers.

mod common;

use std::time::Duration;

use common::{Server, exec, rows, sorted};
use tokio_postgres::SimpleQueryMessage;

const JOIN_VIEW: &str = "SELECT c.region, p.category, count(*) AS orders, sum(o.qty) AS units, \
     sum(o.qty * p.price) AS revenue, avg(o.qty) AS avg_qty, min(o.qty) AS min_qty, max(p.price) AS max_price \
     FROM orders o JOIN customers c ON o.customer_id = c.id JOIN products p ON o.product_id = p.id \
     WHERE o.qty > 0 GROUP BY c.region, p.category HAVING count(*) > 0";

/// The view must equal DataFusion's one-shot answer to the same SQL.
async fn check(c: &tokio_postgres::Client, view: &str, sql: &str) {
    let (incremental, batch) = common::view_and_batch(c, view, sql).await;
    assert_eq!(incremental, batch, "{view} differs from its batch answer");
}

#[tokio::test]
async fn three_way_join_with_aggregates_tracks_every_change() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE customers (id int PRIMARY KEY, region text)").await;
    exec(
        &c,
        "CREATE TABLE products (id int PRIMARY KEY, category text, price numeric(8,2))",
    )
    .await;
    exec(
        &c,
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, product_id int, qty int)",
    )
    .await;
    exec(&c, &format!("CREATE MATERIALIZED VIEW sales AS {JOIN_VIEW}")).await;
    exec(&c, "CREATE MATERIALIZED VIEW outer_view AS SELECT c.id, c.region, o.qty FROM customers c LEFT JOIN orders o ON c.id = o.customer_id").await;
    const OUTER: &str =
        "SELECT c.id, c.region, o.qty FROM customers c LEFT JOIN orders o ON c.id = o.customer_id";
    assert!(rows(&c, "SELECT * FROM sales").await.is_empty());

    let steps = [
        "INSERT INTO customers VALUES (1, 'east'), (2, 'west'), (3, 'east')",
        "INSERT INTO products VALUES (10, 'tools', 9.50), (11, 'toys', 3.00), (12, 'tools', 20.00)",
        "INSERT INTO orders VALUES (100, 1, 10, 2), (101, 2, 11, 5), (102, 3, 12, 1), (103, 1, 11, 0)",
        "UPDATE orders SET qty = qty + 3 WHERE customer_id = 1",
        "UPDATE products SET price = 4.25 WHERE id = 11",
        "UPDATE customers SET region = 'north' WHERE id = 2",
        "DELETE FROM orders WHERE id = 102",
        "INSERT INTO orders SELECT id + 10, customer_id, product_id, qty * 2 FROM orders",
        "DELETE FROM products WHERE category = 'toys'",
        "DELETE FROM customers WHERE region = 'east'",
        "DELETE FROM orders",
    ];
    for step in steps {
        exec(&c, step).await;
        check(&c, "sales", JOIN_VIEW).await;
        check(&c, "outer_view", OUTER).await;
        if step.starts_with("UPDATE customers") {
            // Spot-check one state by hand: east tools is 5 x 9.50 + 1 x 20.00.
            assert_eq!(
                sorted(&c, "SELECT region, category, orders, units, revenue FROM sales").await,
                vec![
                    "east|tools|2|6|67.50",
                    "east|toys|1|3|12.75",
                    "north|toys|1|5|21.25"
                ]
            );
        }
    }
    assert!(rows(&c, "SELECT * FROM sales").await.is_empty());
}

#[tokio::test]
async fn sql_of_the_incremental_path_matches_batch() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE a (k int, x int, s text)").await;
    exec(&c, "CREATE TABLE b (k int, y double precision)").await;
    let views = [
        "SELECT k, x * 2 + 1 AS x2, upper(s) AS us, length(s) AS len, CAST(x AS text) AS xs FROM a WHERE x IS NOT NULL",
        "SELECT DISTINCT k FROM a",
        "SELECT k, x FROM a UNION ALL SELECT k, CAST(y AS int) FROM b",
        "SELECT a.k, a.x, b.y FROM a RIGHT JOIN b ON a.k = b.k",
        "SELECT a.k AS ak, b.k AS bk FROM a FULL OUTER JOIN b ON a.k = b.k AND a.x < 5",
        "SELECT a.k, count(x) AS nx, count(*) AS n, avg(y) AS ay, max(s) AS ms FROM a JOIN b ON a.k = b.k GROUP BY a.k HAVING count(*) > 1",
        "SELECT count(*) AS n, sum(x) AS sx, min(s) AS mn FROM a",
        "SELECT k % 2 AS parity, sum(x) AS sx FROM a GROUP BY k % 2",
        "SELECT a1.k, a2.x FROM a a1, a a2 WHERE a1.k = a2.x",
    ];
    for (i, v) in views.iter().enumerate() {
        exec(&c, &format!("CREATE MATERIALIZED VIEW v{i} AS {v}")).await;
    }
    let steps = [
        "INSERT INTO a VALUES (1, 1, 'x'), (1, 2, 'y'), (2, NULL, 'z'), (3, 3, NULL), (3, 3, NULL)",
        "INSERT INTO b VALUES (1, 0.5), (1, 1.5), (4, 2.0)",
        "UPDATE a SET x = 7 WHERE k = 1",
        "DELETE FROM a WHERE s IS NULL",
        "INSERT INTO a VALUES (4, 4, 'w'), (4, 1, 'v')",
        "DELETE FROM b WHERE y > 1",
        "DELETE FROM a",
    ];
    for step in steps {
        exec(&c, step).await;
        for (i, v) in views.iter().enumerate() {
            check(&c, &format!("v{i}"), v).await;
        }
    }
}

/// Collect SUBSCRIBE rows until `n` have arrived.
async fn next_rows(
    stream: &mut (impl futures::Stream<Item = Result<SimpleQueryMessage, tokio_postgres::Error>> + Unpin),
    n: usize,
) -> Vec<Vec<String>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("subscription stalled");
        if let SimpleQueryMessage::Row(r) = msg.expect("stream ended").expect("subscription error") {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    out
}

#[tokio::test]
async fn subscribe_streams_snapshot_then_exact_changes() {
    let server = Server::start();
    let c = server.connect().await;
    let writer = server.connect().await;
    exec(&c, "CREATE TABLE t (k int, v int)").await;
    exec(&c, "INSERT INTO t VALUES (1, 10), (2, 20)").await;
    exec(
        &c,
        "CREATE MATERIALIZED VIEW m AS SELECT k, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    let stream = c.simple_query_raw("SUBSCRIBE TO m").await.unwrap();
    futures::pin_mut!(stream);
    // Snapshot: both groups at one timestamp with diff +1.
    let mut snapshot = next_rows(&mut stream, 2).await;
    assert_eq!(snapshot[0][0], snapshot[1][0], "snapshot rows share a timestamp");
    snapshot.sort();
    assert_eq!(
        snapshot.iter().map(|r| r[1..].join("|")).collect::<Vec<_>>(),
        vec!["1|1|10", "1|2|20"]
    );
    let t0: i64 = snapshot[0][0].parse().unwrap();
    // An update of group 1: retraction and insertion at one later time.
    exec(&writer, "UPDATE t SET v = 15 WHERE k = 1").await;
    let mut change = next_rows(&mut stream, 2).await;
    change.sort_by(|a, b| a[1].cmp(&b[1]));
    assert_eq!(change[0][0], change[1][0]);
    assert!(change[0][0].parse::<i64>().unwrap() > t0);
    assert_eq!(
        change.iter().map(|r| r[1..].join("|")).collect::<Vec<_>>(),
        vec!["-1|1|10", "1|1|15"]
    );
    exec(&writer, "DELETE FROM t WHERE k = 2").await;
    assert_eq!(next_rows(&mut stream, 1).await[0][1..].join("|"), "-1|2|20");
    // A subscription to a query works the same way.
    let other = server.connect().await;
    let q = other
        .simple_query_raw("SUBSCRIBE (SELECT v FROM t WHERE v > 12)")
        .await
        .unwrap();
    futures::pin_mut!(q);
    assert_eq!(next_rows(&mut q, 1).await[0][1..].join("|"), "1|15");
}

#[tokio::test]
async fn subscription_dataflow_is_dropped_when_the_client_goes_away() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE t (k int)").await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let (sub, socket) = server.connect_raw().await;
        let stream = sub.simple_query_raw("SUBSCRIBE t").await.unwrap();
        subs.push((sub, stream, socket));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rows(&c, "SHOW SUBSCRIPTIONS").await.len(), 5);
    for (_, _, socket) in &subs {
        socket.abort();
    }
    drop(subs);
    // Disconnected subscribers are noticed within a heartbeat or two.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = rows(&c, "SHOW SUBSCRIPTIONS").await.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "subscriptions leaked after their clients went away");
    // A cancel request ends a subscription too, and its session goes on.
    let sub = server.connect().await;
    let stream = sub.simple_query_raw("SUBSCRIBE t").await.unwrap();
    futures::pin_mut!(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sub.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let mut code = None;
    while let Some(m) = futures::StreamExt::next(&mut stream).await {
        if let Err(e) = m {
            code = e.as_db_error().map(|d| d.code().code().to_string());
            break;
        }
    }
    assert_eq!(code.as_deref(), Some("57014"));
    assert_eq!(rows(&sub, "SELECT 1").await.len(), 1);
    assert!(rows(&c, "SHOW SUBSCRIPTIONS").await.is_empty());
    // The server keeps serving and the table stays writable and readable.
    exec(&c, "INSERT INTO t VALUES (1)").await;
    assert_eq!(sorted(&c, "SELECT * FROM t").await, vec!["1"]);
}

#[tokio::test]
async fn concurrent_writers_and_readers_lose_nothing_and_never_tear() {
    let server = Server::start();
    let setup = server.connect().await;
    exec(&setup, "CREATE TABLE acct (writer int, seq int, amount int)").await;
    exec(
        &setup,
        "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(amount) AS s FROM acct",
    )
    .await;
    const WRITES: i32 = 40;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = server.connect().await;
        tasks.push(tokio::spawn(async move {
            for seq in 0..WRITES {
                // Each statement inserts a pair that sums to zero: a reader must
                // never see one without the other.
                exec(
                    &client,
                    &format!("INSERT INTO acct VALUES ({w}, {seq}, 5), ({w}, {seq}, -5)"),
                )
                .await;
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = server.connect().await;
        readers.push(tokio::spawn(async move {
            let mut last = 0i64;
            for _ in 0..60 {
                let r = rows(&client, "SELECT n, s FROM totals").await;
                let n: i64 = r[0][0].as_deref().unwrap().parse().unwrap();
                let s = r[0][1].clone();
                assert_eq!(n % 2, 0, "a statement was half visible");
                assert!(s.is_none() || s.as_deref() == Some("0"), "torn read: {s:?}");
                assert!(n >= last, "a reader went back in time");
                last = n;
                let direct = rows(&client, "SELECT sum(amount), count(*) % 2 FROM acct").await;
                assert!(direct[0][0].is_none() || direct[0][0].as_deref() == Some("0"));
                assert_eq!(direct[0][1].as_deref(), Some("0"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    // Every acknowledged write is visible to the next read.
    assert_eq!(
        sorted(&setup, "SELECT n, s FROM totals").await,
        vec![format!("{}|0", 8 * WRITES * 2)]
    );
    assert_eq!(
        sorted(&setup, "SELECT count(DISTINCT writer * 1000 + seq) FROM acct").await,
        vec![(8 * WRITES).to_string()]
    );
}

#[tokio::test]
async fn min_and_max_of_large_groups_follow_deletes_of_the_extremes() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE big (g int, v int, s text)").await;
    const VIEW: &str = "SELECT g, min(v) AS lo, max(v) AS hi, max(s) AS top, count(*) AS n, avg(v) AS mean \
                        FROM big GROUP BY g";
    exec(&c, &format!("CREATE MATERIALIZED VIEW extremes AS {VIEW}")).await;
    exec(
        &c,
        "INSERT INTO big SELECT value % 3, value, 's' || (value % 977) FROM generate_series(1, 6000)",
    )
    .await;
    check(&c, "extremes", VIEW).await;
    // Remove the current extremes again and again; each time the next
    // value must surface from another bucket.
    for round in 0..3 {
        exec(&c, "DELETE FROM big WHERE v = (SELECT max(v) FROM big)").await;
        exec(&c, "DELETE FROM big WHERE v = (SELECT min(v) FROM big)").await;
        exec(&c, &format!("UPDATE big SET s = NULL WHERE v % 977 = {round}")).await;
        check(&c, "extremes", VIEW).await;
    }
    // A group of NULLs only, and an emptied group.
    exec(&c, "INSERT INTO big VALUES (7, NULL, NULL), (7, NULL, NULL)").await;
    exec(&c, "DELETE FROM big WHERE g = 1").await;
    check(&c, "extremes", VIEW).await;
    assert_eq!(
        sorted(&c, "SELECT g, lo, hi, top, n FROM extremes WHERE g = 7").await,
        vec!["7|NULL|NULL|NULL|2"]
    );
    exec(&c, "DELETE FROM big").await;
    assert!(rows(&c, "SELECT * FROM extremes").await.is_empty());
}
