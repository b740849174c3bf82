//! Load generators end to end: `COUNTER` and `NEXMARK` as sources of
//! tables and views, paced and unpaced, reproducible, exactly once across
//! `kill -9`, and their errors.

mod common;

use std::time::Duration;

use common::{Server, error, exec, sorted, state_dir, wait_state};

/// Every generated column but the event times (which follow the
/// source's creation time).
const BIDS: &str = "SELECT auction, bidder, price, channel, url, extra FROM bid";
const PEOPLE: &str = "SELECT id, name, email_address, credit_card, city, state, extra FROM person";
const AUCTIONS: &str =
    "SELECT id, item_name, description, initial_bid, reserve, seller, category, extra FROM auction";

#[tokio::test]
async fn nexmark_is_reproducible_and_exactly_once_across_kill() {
    let state = state_dir();
    let path = state.path().to_str().unwrap();
    let mut a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    // Paced: 20,000 events at 10,000/s take two seconds; kill it midway.
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 10000, MAX EVENTS 20000, SEED 0) FOR ALL TABLES;
         CREATE MATERIALIZED VIEW per_table AS
           SELECT 'bid' AS t, count(*) AS n FROM bid UNION ALL
           SELECT 'auction', count(*) FROM auction UNION ALL
           SELECT 'person', count(*) FROM person",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let midway = sorted(&c, "SELECT rows_ingested FROM weir_catalog.sources").await;
    a.kill();
    drop(c);
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    wait_state(&c, "nx", |s| s == "finished").await;
    // 1:3:46, every event once: none lost, none repeated by the restart.
    assert_eq!(
        sorted(&c, "SELECT * FROM per_table").await,
        vec!["auction|1200", "bid|18400", "person|400"],
        "killed after {midway:?} events"
    );
    assert_eq!(
        sorted(&c, "SELECT count(DISTINCT id) FROM person").await,
        vec!["400"]
    );
    // Event times advance with the rate: 20,000 events span two seconds.
    let span = sorted(
        &c,
        "SELECT extract(epoch FROM max(date_time) - min(date_time)) BETWEEN 1.9 AND 2.0, max(date_time) - min(date_time) FROM bid",
    )
    .await;
    assert!(span[0].starts_with("t|"), "{span:?}");
    // Hot auctions and bidders: the busiest auction draws far more than
    // its 1/1200 share of the bids (about 15): half go to a few hot ones.
    let hot = sorted(
        &c,
        "SELECT max(n) > 300 FROM (SELECT auction, count(*) AS n FROM bid GROUP BY auction) x",
    )
    .await;
    assert_eq!(hot, vec!["t"]);

    // The same spec unpaced on another server draws the same events; a
    // new seed draws others.
    let b = Server::start();
    let d = b.connect().await;
    exec(
        &d,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (MAX EVENTS 20000)",
    )
    .await;
    wait_state(&d, "nx", |s| s == "finished").await;
    for sql in [BIDS, PEOPLE, AUCTIONS] {
        assert_eq!(sorted(&c, sql).await, sorted(&d, sql).await, "{sql}");
    }
    exec(&d, "DROP SOURCE nx").await;
    assert_eq!(error(&d, "SELECT * FROM bid").await.0, "42P01");
    exec(
        &d,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (MAX EVENTS 20000, SEED 7, PREGENERATE)",
    )
    .await;
    wait_state(&d, "nx", |s| s == "finished").await;
    assert_eq!(sorted(&d, "SELECT count(*) FROM bid").await, vec!["18400"]);
    assert_ne!(sorted(&c, BIDS).await, sorted(&d, BIDS).await);
}

#[tokio::test]
async fn nexmark_for_tables_feeds_only_those_across_restart() {
    let state = state_dir();
    let path = state.path().to_str().unwrap();
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    // The same events twice: once every table, once only bids (renamed)
    // and people.
    exec(
        &c,
        "CREATE SOURCE every FROM LOAD GENERATOR NEXMARK (MAX EVENTS 20000) FOR ALL TABLES;
         CREATE SOURCE some FROM LOAD GENERATOR NEXMARK (MAX EVENTS 20000) FOR TABLES (person AS people, bid AS bids)",
    )
    .await;
    wait_state(&c, "every", |s| s == "finished").await;
    wait_state(&c, "some", |s| s == "finished").await;
    assert_eq!(
        sorted(&c, BIDS).await,
        sorted(&c, &BIDS.replace("FROM bid", "FROM bids")).await
    );
    assert_eq!(
        sorted(&c, PEOPLE).await,
        sorted(&c, &PEOPLE.replace("FROM person", "FROM people")).await
    );
    // Both drew every event (a generator's position is its event count):
    // the second dropped the auctions.
    assert_eq!(
        sorted(
            &c,
            "SELECT name, rows_ingested FROM weir_catalog.sources WHERE name IN ('every', 'some')"
        )
        .await,
        vec!["every|20000", "some|20000"]
    );
    assert_eq!(sorted(&c, "SELECT count(*) FROM bids").await, vec!["18400"]);
    drop(c);
    drop(a);
    // The choice is durable: after a restart the same tables, no others,
    // and the source does not draw again.
    let a = Server::on_state(path, 2, &[]);
    let c = a.connect().await;
    wait_state(&c, "some", |s| s == "finished").await;
    assert_eq!(
        sorted(
            &c,
            "SELECT (SELECT count(*) FROM bids), (SELECT count(*) FROM people), (SELECT count(*) FROM auction)"
        )
        .await,
        vec!["18400|400|1200"]
    );
    exec(&c, "DROP SOURCE every").await;
    assert_eq!(error(&c, "SELECT * FROM auction").await.0, "42P01");
    assert_eq!(sorted(&c, "SELECT count(*) FROM people").await, vec!["400"]);
}

#[tokio::test]
async fn counter_counts_at_its_rate_and_stops_at_max() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE ticks FROM LOAD GENERATOR COUNTER (EVENTS PER SECOND 200);
         CREATE MATERIALIZED VIEW seen AS SELECT count(*) AS n, max(counter) AS top, min(counter) AS bottom FROM ticks",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let row = &common::rows(&c, "SELECT n, top, bottom FROM seen").await[0];
    let n: i64 = row[0].as_deref().unwrap().parse().unwrap();
    // No gaps, counting from 1, at about the rate.
    assert_eq!(row[1].as_deref(), row[0].as_deref());
    assert_eq!(row[2].as_deref(), Some("1"));
    assert!((150..=500).contains(&n), "{n} ticks in 1.5 s at 200/s");
    assert_eq!(
        sorted(&c, "SHOW SOURCES").await,
        vec!["ticks|load-generator COUNTER|||running"]
    );

    exec(
        &c,
        "CREATE SOURCE upto FROM LOAD GENERATOR COUNTER (MAX EVENTS 1000)",
    )
    .await;
    wait_state(&c, "upto", |s| s == "finished").await;
    assert_eq!(
        sorted(&c, "SELECT count(*), sum(counter), max(counter) FROM upto").await,
        vec!["1000|500500|1000"]
    );
    assert_eq!(
        sorted(
            &c,
            "SELECT rows_ingested, lsn_received IS NULL FROM weir_catalog.sources WHERE name = 'upto'"
        )
        .await,
        vec!["1000|t"]
    );
}

#[tokio::test]
async fn bad_generators_are_refused_clearly() {
    let s = Server::start();
    let c = s.connect().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "CREATE SOURCE x FROM LOAD GENERATOR TPCH",
            "22023",
            "no load generator TPCH",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR COUNTER (TICK INTERVAL '1s')",
            "22023",
            "unknown option TICK INTERVAL",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR COUNTER (MAX EVENTS 'many')",
            "22023",
            "non-negative integer",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR NEXMARK (PREGENERATE)",
            "22023",
            "PREGENERATE needs MAX EVENTS",
        ),
        ("CREATE SOURCE x FROM LOAD GENERATOR", "42601", "syntax error"),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR NEXMARK FOR TABLES (bids)",
            "22023",
            "LOAD GENERATOR NEXMARK has no table bids; it has person, auction, bid",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR NEXMARK FOR TABLES (bid, BID AS b)",
            "22023",
            "table bid is named twice",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR NEXMARK FOR TABLES (public.bid)",
            "22023",
            "write bid, not public.bid",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR COUNTER FOR TABLES (counter)",
            "22023",
            "it feeds one table, named after the source",
        ),
        (
            "CREATE SOURCE x FROM LOAD GENERATOR NEXMARK FOR TABLES ()",
            "42601",
            "syntax error",
        ),
    ];
    for (sql, code, message) in cases {
        let (got, text, _) = error(&c, sql).await;
        assert_eq!(got, *code, "{sql}: {text}");
        assert!(text.contains(message), "{sql}: {text}");
    }
    exec(&c, "CREATE TABLE bid (a int)").await;
    assert_eq!(
        error(&c, "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK").await.0,
        "42P07"
    );
    exec(&c, "DROP TABLE bid").await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (MAX EVENTS 100)",
    )
    .await;
    assert_eq!(
        error(&c, "CREATE SOURCE nx FROM LOAD GENERATOR COUNTER").await.0,
        "42710"
    );
    exec(&c, "CREATE SOURCE IF NOT EXISTS nx FROM LOAD GENERATOR COUNTER").await;
    let (code, _, _) = error(&c, "INSERT INTO bid VALUES (1, 1, 1, 'c', 'u', now(), 'e')").await;
    assert_eq!(code, "42809");
    // Nothing was lost to the refusals.
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_eq!(sorted(&c, "SELECT count(*) FROM bid").await, vec!["92"]);
}

/// Every Nexmark query of the benchmark, as a view over generated events,
/// equals its one-shot answer (q18 in row count only: its standard form
/// picks among bids tied in time).
#[tokio::test]
async fn nexmark_queries_as_views_equal_one_shot() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (MAX EVENTS 3000)",
    )
    .await;
    wait_state(&c, "nx", |s| s == "finished").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nexmark");
    let mut queries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    queries.sort();
    assert!(queries.len() >= 20, "{queries:?}");
    for path in queries {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let sql: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        exec(&c, &format!("CREATE MATERIALIZED VIEW {name} AS {sql}")).await;
        if name == "q18" {
            assert_eq!(
                sorted(&c, &format!("SELECT count(*) FROM {name}")).await,
                sorted(&c, &format!("SELECT count(*) FROM ({sql}) q")).await,
            );
            continue;
        }
        let (view, batch) = common::view_and_batch(&c, &name, &sql).await;
        assert!(!batch.is_empty() || name == "q2", "{name} is empty");
        assert_eq!(view, batch, "{name}");
    }
}

/// `min` and `max` over what only a generator writes (through joins and
/// views of views) keep one running value per group, `State:
/// ReduceRunning`, and equal the one-shot answer after streaming in; so
/// does a `max` of a count over such rows, grouped by what the count's
/// group determines. Over a view whose rows change, a table statements
/// write, or grouped by the count itself, they keep the hierarchy that can
/// give a value back.
#[tokio::test]
async fn extremes_over_inserts_only_are_running_values() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 5000, MAX EVENTS 5000, SEED 3);
         CREATE TABLE written (k int, v int);
         INSERT INTO written VALUES (1, 5), (1, 7), (2, NULL);",
    )
    .await;
    let views = [
        (
            "per_auction",
            "SELECT auction, min(price) AS lo, max(price) AS hi, count(*) AS n, avg(price) AS mean, max(extra) AS e \
             FROM bid GROUP BY auction",
        ),
        (
            "per_category",
            "SELECT a.category, max(b.price) AS top, min(b.date_time) AS first_bid, sum(b.price) AS total \
             FROM auction a JOIN bid b ON a.id = b.auction AND b.date_time >= a.date_time GROUP BY a.category",
        ),
        (
            "cheap",
            "SELECT auction, price FROM bid WHERE price < 1000 UNION ALL SELECT id, reserve FROM auction",
        ),
        (
            "cheapest",
            "SELECT min(price) AS lo, max(auction) AS a, count(*) AS n FROM cheap",
        ),
        (
            "busiest",
            "SELECT max(n) AS most, min(hi) AS least FROM per_auction",
        ),
        ("written_max", "SELECT k, max(v) AS hi FROM written GROUP BY k"),
        // Over a join that filters and projects its matches itself
        // (Nexmark q4's inner query).
        (
            "per_auction_open",
            "SELECT a.id, a.category, max(b.price) AS top, min(b.date_time) AS first_bid, count(*) AS n \
             FROM auction a, bid b WHERE a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires \
             GROUP BY a.id, a.category",
        ),
        // Distinct and filtered counts join the running state.
        (
            "per_auction_distinct",
            "SELECT auction, count(DISTINCT bidder) AS bidders, count(*) FILTER (WHERE price < 10000) AS cheap, \
             max(price) FILTER (WHERE bidder % 2 = 0) AS even_top, min(DISTINCT channel) AS ch FROM bid GROUP BY auction",
        ),
        // Counts and maxima over inserts only rise: their maxima, by
        // anything the counted group determines, skip the retractions.
        (
            "hottest",
            "WITH c AS (SELECT auction, count(*) AS n, max(price) AS hi FROM bid GROUP BY auction) \
             SELECT auction % 10 AS tens, max(n) AS most, max(hi) AS top FROM c GROUP BY auction % 10",
        ),
        (
            "hottest_of_all",
            "SELECT max(n) AS most FROM (SELECT auction, count(*) AS n FROM bid GROUP BY auction) c",
        ),
        // Grouped by a count, a row changes group: the hierarchy stays.
        (
            "top_by_count",
            "WITH c AS (SELECT auction, count(*) AS n, count(extra) AS m FROM bid GROUP BY auction) \
             SELECT n, max(m) AS top FROM c GROUP BY n",
        ),
    ];
    create_views(&c, &views).await;
    exec(
        &c,
        "INSERT INTO written VALUES (2, 3); DELETE FROM written WHERE v = 7;",
    )
    .await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(sorted(&c, "SELECT * FROM written_max").await, vec!["1|5", "2|3"]);
    assert_eq!(
        relations_arranged_by(&c, "State: ReduceRunning").await,
        vec![
            "cheapest",
            "hottest",
            "hottest_of_all",
            "per_auction",
            "per_auction_distinct",
            "per_auction_open",
            "per_category"
        ]
    );
}

/// The rows holding their group's maximum of a count over inserts
/// (Nexmark q5's hot items: a semi join of the counts with their own
/// per-group maximum) are kept as one running state per group, `State:
/// RunningLeaders`, with no join, and equal the one-shot answer after
/// streaming in, ties included, also as an inner join (the maximum over
/// all rows is planned so). Where a row can change without its count
/// rising (a second aggregate beside it) or the counted rows can be
/// deleted, the join stays.
#[tokio::test]
async fn rows_holding_a_running_maximum_are_kept_per_group() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 5000, MAX EVENTS 5000, SEED 5);
         CREATE TABLE written (k int, v int);
         INSERT INTO written VALUES (1, 5), (1, 7), (2, 7);",
    )
    .await;
    let q5 = include_str!("../benches/nexmark/q5.sql");
    let views = [
        // Per group, with ties: most auctions' bidders bid once.
        (
            "most_per_auction",
            "WITH c AS (SELECT auction, bidder % 5 AS b5, count(*) AS n FROM bid GROUP BY auction, bidder % 5) \
             SELECT c.auction, c.b5, c.n FROM c JOIN (SELECT auction, max(n) AS m FROM c GROUP BY auction) x \
             ON c.auction = x.auction AND c.n >= x.m",
        ),
        // One group of all rows.
        (
            "hottest_auctions",
            "WITH c AS (SELECT auction, count(*) AS n FROM bid GROUP BY auction) \
             SELECT c.auction, c.n FROM c JOIN (SELECT max(n) AS m FROM c) x ON c.n >= x.m",
        ),
        ("hot_items", q5),
        // An inner join, the maximum beside each row.
        (
            "hottest_with_maximum",
            "WITH c AS (SELECT auction, count(*) AS n FROM bid GROUP BY auction) \
             SELECT * FROM c JOIN (SELECT max(n) AS m FROM c) x ON c.n >= x.m",
        ),
        // A sum beside the count: a row changes with its count equal.
        (
            "hottest_with_sums",
            "WITH c AS (SELECT auction % 7 AS a7, count(*) AS n, sum(price) AS total FROM bid GROUP BY auction % 7) \
             SELECT c.a7, c.n, c.total FROM c JOIN (SELECT max(n) AS m FROM c) x ON c.n >= x.m",
        ),
        // Counted rows that statements delete: counts fall.
        (
            "written_most",
            "WITH c AS (SELECT v, count(*) AS n FROM written GROUP BY v) \
             SELECT c.v, c.n FROM c JOIN (SELECT max(n) AS m FROM c) x ON c.n >= x.m",
        ),
    ];
    create_views(&c, &views).await;
    exec(
        &c,
        "DELETE FROM written WHERE v = 5; INSERT INTO written VALUES (3, 9), (4, 9);",
    )
    .await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(sorted(&c, "SELECT * FROM written_most").await, vec!["7|2", "9|2"]);
    assert_eq!(
        relations_arranged_by(&c, "State: RunningLeaders").await,
        vec![
            "hot_items",
            "hottest_auctions",
            "hottest_with_maximum",
            "most_per_auction"
        ]
    );
}

/// Sessions numbered with `lag` and a running `sum` and folded per
/// session (Nexmark q11's SESSION window) over rows that are only
/// inserted are kept as each partition's sessions, `State:
/// SessionWindows`, and equal the one-shot answer after streaming in:
/// gaps that split bidders' bids into many sessions, the conditions
/// written either way round (numbering from 1, or from 0 where a NULL
/// previous time opens nothing), NULL times, the session number kept and
/// placed first, integer times arriving out of order (prices, whose sessions
/// merge and renumber), and copies shifted back in time that bridge
/// sessions. A sum per session, and times that statements delete, stay
/// with the per-partition evaluation.
#[tokio::test]
async fn session_windows_over_inserts_keep_sessions() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 5000, MAX EVENTS 5000, SEED 7);
         CREATE TABLE written (k int, t bigint NOT NULL);
         INSERT INTO written VALUES (1, 5), (1, 7), (1, 30), (2, 1);",
    )
    .await;
    let q11 = include_str!("../benches/nexmark/q11.sql");
    let numbered = |opens: &str, times: &str, keys: &str, aggregates: &str| {
        format!(
            "WITH m AS (SELECT bidder, date_time, {opens} AS opens FROM {times}), \
             n AS (SELECT bidder, date_time, sum(opens) OVER (PARTITION BY bidder ORDER BY date_time) AS session FROM m) \
             SELECT {keys}, {aggregates} FROM n GROUP BY {keys}"
        )
    };
    let lag = "lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time)";
    let short = numbered(
        &format!("CASE WHEN {lag} >= date_time - INTERVAL '2 milliseconds' THEN 0 ELSE 1 END"),
        "bid",
        "bidder, session",
        "count(*), min(date_time), max(date_time)",
    );
    // Some times NULL: they sort last and share the number after them.
    let with_nulls =
        "(SELECT bidder, CASE WHEN price % 13 = 0 THEN NULL ELSE date_time END AS date_time FROM bid) b";
    let far = numbered(
        &format!(
            "CASE WHEN {lag} IS NULL OR date_time - INTERVAL '3 milliseconds' > {lag} THEN 1 ELSE 0 END"
        ),
        with_nulls,
        "session, bidder",
        "count(*) AS n, count(date_time) AS timed, max(date_time)",
    );
    let from_zero = numbered(
        &format!("CASE WHEN {lag} < date_time - INTERVAL '5 milliseconds' THEN 1 ELSE 0 END"),
        with_nulls,
        "bidder, session",
        "min(date_time), count(*)",
    );
    let shifted = numbered(
        &format!("CASE WHEN {lag} + INTERVAL '1 millisecond' >= date_time THEN 0 ELSE 1 END"),
        "(SELECT bidder, date_time FROM bid UNION ALL SELECT bidder, date_time - INTERVAL '3 milliseconds' FROM bid) b",
        "bidder, session",
        "count(*), min(date_time), max(date_time)",
    );
    let prices = "WITH m AS (SELECT a10, price, \
                  CASE WHEN price - lag(price) OVER (PARTITION BY a10 ORDER BY price) <= 20000 THEN 0 ELSE 1 END AS opens \
                  FROM (SELECT auction % 10 AS a10, price FROM bid) b), \
                  n AS (SELECT a10, price, sum(opens) OVER (PARTITION BY a10 ORDER BY price) AS session FROM m) \
                  SELECT session, a10, count(*), min(price), max(price) FROM n GROUP BY session, a10";
    let summed = "WITH m AS (SELECT bidder, date_time, price, \
                  CASE WHEN lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) >= date_time - INTERVAL '2 milliseconds' THEN 0 ELSE 1 END AS opens FROM bid), \
                  n AS (SELECT bidder, date_time, price, sum(opens) OVER (PARTITION BY bidder ORDER BY date_time) AS session FROM m) \
                  SELECT bidder, session, count(*), sum(price) FROM n GROUP BY bidder, session";
    let written = "WITH m AS (SELECT k, t, CASE WHEN lag(t) OVER (PARTITION BY k ORDER BY t) >= t - 10 THEN 0 ELSE 1 END AS opens FROM written), \
                   n AS (SELECT k, t, sum(opens) OVER (PARTITION BY k ORDER BY t) AS session FROM m) \
                   SELECT k, session, count(*), min(t), max(t) FROM n GROUP BY k, session";
    let views = [
        ("user_sessions", q11),
        ("short_sessions", short.as_str()),
        ("far_sessions", far.as_str()),
        ("sessions_from_zero", from_zero.as_str()),
        ("shifted_sessions", shifted.as_str()),
        ("price_runs", prices),
        ("summed_sessions", summed),
        ("written_sessions", written),
    ];
    create_views(&c, &views).await;
    exec(
        &c,
        "DELETE FROM written WHERE t = 30; INSERT INTO written VALUES (1, 16), (2, 40);",
    )
    .await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(
        sorted(&c, "SELECT * FROM written_sessions").await,
        vec!["1|1|3|5|16", "2|1|1|1|1", "2|2|1|40|40"]
    );
    // Gaps this short split bidders' bids into many sessions.
    let many = sorted(&c, "SELECT count(*) > count(DISTINCT bidder) FROM short_sessions").await;
    assert_eq!(many, vec!["t"]);
    assert_eq!(
        relations_arranged_by(&c, "State: SessionWindows").await,
        vec![
            "far_sessions",
            "price_runs",
            "sessions_from_zero",
            "shifted_sessions",
            "short_sessions",
            "user_sessions"
        ]
    );
}

/// `row_number() ... <= k` over what only a generator writes (bids, a
/// join of auctions and bids, a union with copies of rows) keeps each
/// partition's first k rows as a running state, `State: RankRunning`,
/// and equals the one-shot answer after streaming in, newest-first ones
/// too, whose states later rows replace whole. Over a table
/// statements write, rows can leave the first k: the reduction over the
/// whole partition stays, and answers after a delete.
#[tokio::test]
async fn top_k_over_inserts_only_is_running() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 5000, MAX EVENTS 5000, SEED 5);
         CREATE TABLE written (k int, v int);
         INSERT INTO written VALUES (1, 5), (1, 7), (1, 9), (2, NULL), (2, 1);",
    )
    .await;
    // Every ORDER BY ends in columns that tell rows apart, so the one-shot
    // answer numbers them as the view does.
    let views = [
        (
            "top_bids",
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC, date_time, bidder, extra) AS r \
             FROM bid) t WHERE r <= 10",
        ),
        (
            "last_bid",
            "SELECT auction, bidder, price FROM (SELECT *, row_number() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, price, extra) AS r \
             FROM bid) t WHERE r = 1",
        ),
        (
            "winning",
            "SELECT id, seller, price, bidder FROM (SELECT a.id, a.seller, b.price, b.bidder, row_number() OVER \
             (PARTITION BY a.id ORDER BY b.price DESC, b.date_time, b.bidder, b.extra) AS r FROM auction a, bid b \
             WHERE a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires) t WHERE r < 2",
        ),
        (
            "with_copies",
            "SELECT auction, price, r FROM (SELECT *, row_number() OVER (PARTITION BY auction % 7 ORDER BY price, bidder) AS r \
             FROM (SELECT auction, bidder, price FROM bid UNION ALL SELECT auction, bidder, price FROM bid WHERE price < 5000000) u) t \
             WHERE r <= 5",
        ),
        // Filters that keep every emitted row, and the window's columns in
        // order without the number: the rows pass through unnumbered.
        (
            "cheapest_bids",
            "SELECT auction, bidder, price, channel, url, date_time, extra FROM (SELECT *, row_number() OVER \
             (PARTITION BY auction ORDER BY price, date_time, bidder, extra) AS r FROM bid) t WHERE r <= 3",
        ),
        // Newest first over bids arriving in time order: each later bid
        // replaces its partition's state whole (Nexmark q18's shape).
        (
            "newest_bid",
            "SELECT auction, bidder, price, channel, url, date_time, extra FROM (SELECT *, row_number() OVER \
             (PARTITION BY bidder, auction ORDER BY date_time DESC, price, extra) AS r FROM bid) t WHERE r <= 1",
        ),
        (
            "newest_two",
            "SELECT auction, bidder, price, channel, url, date_time, extra FROM (SELECT *, row_number() OVER \
             (PARTITION BY bidder ORDER BY date_time DESC, auction, price, extra) AS r FROM bid) t WHERE r <= 2",
        ),
        (
            "copies_unnumbered",
            "SELECT auction, bidder, price FROM (SELECT *, row_number() OVER (PARTITION BY auction % 7 ORDER BY price, bidder) AS r \
             FROM (SELECT auction, bidder, price FROM bid UNION ALL SELECT auction, bidder, price FROM bid WHERE price < 5000000) u) t \
             WHERE r < 6",
        ),
        (
            "written_top",
            "SELECT * FROM (SELECT k, v, row_number() OVER (PARTITION BY k ORDER BY v DESC NULLS LAST) AS r FROM written) t WHERE r <= 2",
        ),
    ];
    create_views(&c, &views).await;
    exec(&c, "DELETE FROM written WHERE v = 9").await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(
        sorted(&c, "SELECT * FROM written_top").await,
        vec!["1|5|2", "1|7|1", "2|1|1", "2|NULL|2"]
    );
    assert_eq!(
        relations_arranged_by(&c, "State: RankRunning").await,
        vec![
            "cheapest_bids",
            "copies_unnumbered",
            "last_bid",
            "newest_bid",
            "newest_two",
            "top_bids",
            "winning",
            "with_copies"
        ]
    );
}

/// Inner joins of what only a generator writes keep each side's rows in a
/// hash table, `State: JoinInsertsLeft` and `Right`, not arrangements, and
/// equal the one-shot answer after streaming in: Nexmark q4 and q20, sellers
/// and their auctions (q3 without its narrow filter), a
/// residual that is evaluated, a self-join matching many rows to many, a
/// side with every row twice, and keys that are sometimes NULL. An outer
/// join, and a join of tables that statements write, stay arranged.
#[tokio::test]
async fn joins_over_inserts_keep_tables() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 5000, MAX EVENTS 5000, SEED 3);
         CREATE TABLE l (k int, v int);
         CREATE TABLE r (k int, w int);
         INSERT INTO l VALUES (1, 10), (2, 20), (2, 21);
         INSERT INTO r VALUES (2, 200), (3, 300);",
    )
    .await;
    let q4 = include_str!("../benches/nexmark/q4.sql");
    let q20 = include_str!("../benches/nexmark/q20.sql");
    let views = [
        (
            "sellers",
            "SELECT p.name, p.state, a.id FROM auction AS a INNER JOIN person AS p ON a.seller = p.id \
             WHERE a.category = 10",
        ),
        ("q4", q4),
        ("q20", q20),
        (
            "evaluated",
            "SELECT a.id, b.bidder, b.price FROM auction a JOIN bid b ON a.id = b.auction \
             AND b.price + a.initial_bid > 2 * a.reserve",
        ),
        (
            "same_auction",
            "SELECT x.channel, count(*) AS pairs, sum(y.price) AS paid FROM bid x JOIN bid y \
             ON x.auction = y.auction AND x.bidder = y.bidder GROUP BY x.channel",
        ),
        (
            "twice",
            "SELECT a.seller, u.price FROM (SELECT auction, price FROM bid UNION ALL SELECT auction, price FROM bid) u \
             JOIN auction a ON u.auction = a.id",
        ),
        (
            "null_keys",
            "SELECT a.id, b.price FROM auction a JOIN \
             (SELECT CASE WHEN price % 3 = 0 THEN NULL ELSE auction END AS auction, price FROM bid) b ON b.auction = a.id",
        ),
        (
            "outer",
            "SELECT a.id, b.price FROM auction a LEFT JOIN bid b ON a.id = b.auction",
        ),
        ("written", "SELECT l.k, v, w FROM l JOIN r ON l.k = r.k"),
    ];
    create_views(&c, &views).await;
    exec(&c, "DELETE FROM l WHERE v = 20; INSERT INTO r VALUES (1, 100);").await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(
        sorted(&c, "SELECT * FROM written").await,
        vec!["1|10|100", "2|21|200"]
    );
    let hashed = vec![
        "evaluated",
        "null_keys",
        "q20",
        "q4",
        "same_auction",
        "sellers",
        "twice",
    ];
    assert_eq!(relations_arranged_by(&c, "State: JoinInsertsLeft").await, hashed);
    assert_eq!(relations_arranged_by(&c, "State: JoinInsertsRight").await, hashed);
    assert_eq!(
        relations_arranged_by(&c, "JoinArrangeLeft").await,
        vec!["outer", "written"]
    );
    // Every bid is kept once by q20, auctions of every category or not.
    let kept = sorted(
        &c,
        "SELECT operator, sum(records) FROM weir_catalog.arrangement_sizes \
         WHERE relation = 'q20' AND operator LIKE 'State: JoinInserts%' GROUP BY operator",
    )
    .await;
    let bids = sorted(&c, "SELECT count(*) FROM bid").await;
    let auctions = sorted(&c, "SELECT count(*) FROM auction WHERE category = 10").await;
    assert_eq!(
        kept,
        vec![
            format!("State: JoinInsertsLeft|{}", bids[0]),
            format!("State: JoinInsertsRight|{}", auctions[0]),
        ]
    );
}

/// Nexmark q11's sessions (numbered by `lag` and a running `sum`, then
/// grouped by bidder and session) with the money spent in each, which
/// the running sessions do not keep, run as one reduce per bidder,
/// `Arrange: WindowReduce`, and equal the one-shot answer after streaming
/// in. So does a grouping by bidder and auction of a window
/// partitioned by bidder, fused too, and a grouping by bidder alone of a
/// window partitioned by bidder and auction, whose groups span partitions
/// and which is not fused.
#[tokio::test]
async fn sessions_group_within_partitions() {
    let s = Server::start();
    let c = s.connect().await;
    exec(
        &c,
        "CREATE SOURCE nx FROM LOAD GENERATOR NEXMARK (EVENTS PER SECOND 20000, MAX EVENTS 20000, SEED 11) FOR TABLES (bid)",
    )
    .await;
    let views = [
        (
            "sessions",
            "WITH m AS (SELECT bidder, date_time, price, CASE WHEN lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) \
             >= date_time - INTERVAL '10 seconds' THEN 0 ELSE 1 END AS opens FROM bid), \
             n AS (SELECT bidder, date_time, price, sum(opens) OVER (PARTITION BY bidder ORDER BY date_time) AS session FROM m) \
             SELECT bidder, count(*) AS bids, min(date_time) AS starttime, sum(price) AS spent FROM n GROUP BY bidder, session",
        ),
        (
            "bidder_auctions",
            "SELECT bidder, auction, count(*) AS bids, min(rank) AS best, avg(price) AS mean FROM (SELECT bidder, auction, price, \
             rank() OVER (PARTITION BY bidder ORDER BY price DESC) AS rank FROM bid) t GROUP BY bidder, auction",
        ),
        (
            "auction_runs",
            "SELECT bidder, count(*) AS bids, max(r) AS longest, sum(price) AS spent FROM (SELECT bidder, price, \
             row_number() OVER (PARTITION BY bidder, auction ORDER BY date_time, price, extra) AS r FROM bid) t \
             WHERE r > 1 GROUP BY bidder",
        ),
    ];
    create_views(&c, &views).await;
    wait_state(&c, "nx", |s| s == "finished").await;
    assert_views_equal_one_shot(&c, &views).await;
    assert_eq!(
        relations_arranged_by(&c, "Arrange: WindowReduce").await,
        vec!["bidder_auctions", "sessions"]
    );
}

/// Create each `(name, sql)` as a materialized view.
async fn create_views(c: &tokio_postgres::Client, views: &[(&str, &str)]) {
    for (name, sql) in views {
        exec(c, &format!("CREATE MATERIALIZED VIEW {name} AS {sql}")).await;
    }
}

/// Each view is not empty and equals the one-shot answer to its SQL.
async fn assert_views_equal_one_shot(c: &tokio_postgres::Client, views: &[(&str, &str)]) {
    for (name, sql) in views {
        let (view, batch) = common::view_and_batch(c, name, sql).await;
        assert!(!batch.is_empty(), "{name} is empty");
        assert_eq!(view, batch, "{name}");
    }
}

/// The views with an arrangement of `operator`, sorted.
async fn relations_arranged_by(c: &tokio_postgres::Client, operator: &str) -> Vec<String> {
    sorted(
        c,
        &format!(
            "SELECT DISTINCT relation FROM weir_catalog.arrangement_sizes WHERE operator = '{operator}'"
        ),
    )
    .await
}
