//! Subqueries, set operations and general aggregates, maintained
//! incrementally and checked against the batch answer after every change.

mod common;

use common::{Server, exec};

const VIEWS: &[&str] = &[
    "SELECT * FROM a WHERE k IN (SELECT k FROM b)",
    "SELECT * FROM a WHERE k NOT IN (SELECT k FROM b)",
    "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k AND b.y > 5)",
    "SELECT * FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
    "SELECT x FROM a WHERE x > (SELECT avg(y) FROM b WHERE b.k = a.k)",
    "SELECT k FROM a INTERSECT SELECT k FROM b",
    "SELECT k FROM a EXCEPT SELECT k FROM b",
    "SELECT k FROM a UNION SELECT k FROM b",
    "SELECT a.k, b.y FROM a JOIN b USING (k)",
    "SELECT * FROM a NATURAL JOIN b",
    "SELECT a.k AS ak, b.k AS bk FROM a JOIN b ON a.k < b.k",
    "SELECT a.k FROM a CROSS JOIN b",
    "WITH big AS (SELECT k, x FROM a WHERE x > 1) SELECT big.k, count(*) AS n FROM big GROUP BY big.k",
    "SELECT count(DISTINCT x) AS d, count(*) AS n, string_agg(s, ',' ORDER BY s) AS ss FROM a",
    "SELECT k, count(DISTINCT x) AS d, sum(x) AS s, array_agg(x ORDER BY x) AS xs FROM a GROUP BY k",
    "SELECT bool_and(x > 0) AS ba, bool_or(x > 3) AS bo FROM a",
    "SELECT k, stddev(x) AS sd, variance(x) AS v, stddev_pop(x) AS sp, var_pop(x) AS vp FROM a GROUP BY k",
    "SELECT count(*) FILTER (WHERE x > 1) AS f, sum(x) FILTER (WHERE k = 1) AS g FROM a",
    "SELECT min(s) AS mn, max(s) AS mx, count(DISTINCT s) AS ds, sum(DISTINCT x) AS sx FROM a",
    "SELECT k, CASE WHEN x > 1 THEN 'big' ELSE coalesce(s, 'none') END AS c, nullif(x, 1) AS nx FROM a",
    "SELECT k FROM a WHERE s LIKE 'p%' OR s ILIKE 'Q' OR s ~ '^z'",
    "SELECT k, x FROM a ORDER BY x DESC, k LIMIT 3",
    "SELECT k, x FROM a ORDER BY x NULLS FIRST, k LIMIT 2 OFFSET 1",
    "SELECT k, count(*) AS n FROM a GROUP BY k ORDER BY n DESC, k LIMIT 2",
    "SELECT s FROM a ORDER BY s OFFSET 2",
    "SELECT k, (SELECT count(*) FROM a AS y WHERE y.x < a.x) AS below FROM a",
    "SELECT k, (SELECT max(b.y) FROM b WHERE b.k <> a.k) AS other FROM a",
    "SELECT k FROM a WHERE x > (SELECT avg(y.x) FROM a AS y WHERE y.k < a.k)",
];

#[tokio::test]
async fn subqueries_set_operations_and_aggregates_match_batch() {
    let server = Server::start();
    let c = server.connect().await;
    exec(&c, "CREATE TABLE a (k int, x int, s text)").await;
    exec(&c, "CREATE TABLE b (k int, y int)").await;
    for (i, v) in VIEWS.iter().enumerate() {
        exec(&c, &format!("CREATE MATERIALIZED VIEW v{i} AS {v}")).await;
    }
    let steps = [
        "INSERT INTO a VALUES (1, 1, 'p'), (2, 2, 'q'), (3, NULL, 'r'), (NULL, 4, NULL), (1, 1, 'z')",
        "INSERT INTO b VALUES (1, 10), (2, NULL)",
        "INSERT INTO b VALUES (NULL, 1)",
        "UPDATE a SET x = x + 5 WHERE k = 1",
        "DELETE FROM b WHERE k IS NULL",
        "INSERT INTO a SELECT k + 10, x, s FROM a",
        "DELETE FROM b",
        "DELETE FROM a WHERE k > 2",
        "DELETE FROM a",
    ];
    for step in steps {
        exec(&c, step).await;
        for (i, v) in VIEWS.iter().enumerate() {
            let (incremental, batch) = common::view_and_batch(&c, &format!("v{i}"), v).await;
            assert_eq!(
                incremental, batch,
                "after `{step}`, view `{v}` differs from its batch answer"
            );
        }
    }
}
