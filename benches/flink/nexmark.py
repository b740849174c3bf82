"""Nexmark on Apache Flink (PyFlink), the peer Weir's benchmark runs beside.

Reads the events `weir-bench nexmark --flink` wrote as CSV files
(person/, auction/, bid/ under --dir), runs each query as
`INSERT INTO` a blackhole sink in streaming mode on a local mini-cluster
(parallelism = --parallelism, mini-batch on), and prints one JSON line per
query: the job's wall time, and the same for an empty input (the job's
fixed start-up and shutdown cost, to subtract).

Queries are Flink's canonical Nexmark SQL (github.com/nexmark/nexmark),
adapted only where our data differ: states are lower case (q3), and
count_char (a UDF) is written with CHAR_LENGTH and REPLACE (q14). q6 is
not supported by Flink. q11 is the canonical SESSION window as a window
TVF; q12 and q13 take the same stand-ins as Weir's files: q12 tumbles by
event time rather than PROCTIME(), and q13's side input is a bounded
10,000-row table (datagen sequence 0..9999, value 'value-<key>') joined
on MOD(auction, 10000) rather than a lookup join on processing time.
"""

import argparse
import json
import sys
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

TABLES = {
    "person": "id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, "
    "state STRING, date_time TIMESTAMP(3), extra STRING",
    "auction": "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT, "
    "date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra STRING",
    "bid": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
    "date_time TIMESTAMP(3), extra STRING",
}

COUNT_BANDS = """
    count(*) AS total_bids,
    count(*) filter (where price < 10000) AS rank1_bids,
    count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
    count(*) filter (where price >= 1000000) AS rank3_bids"""

DISTINCT_BANDS = """,
    count(distinct bidder) AS total_bidders,
    count(distinct bidder) filter (where price < 10000) AS rank1_bidders,
    count(distinct bidder) filter (where price >= 10000 and price < 1000000) AS rank2_bidders,
    count(distinct bidder) filter (where price >= 1000000) AS rank3_bidders,
    count(distinct auction) AS total_auctions,
    count(distinct auction) filter (where price < 10000) AS rank1_auctions,
    count(distinct auction) filter (where price >= 10000 and price < 1000000) AS rank2_auctions,
    count(distinct auction) filter (where price >= 1000000) AS rank3_auctions"""

QUERIES = {
    "q0": "SELECT auction, bidder, price, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price as price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id
        FROM auction AS A INNER JOIN person AS P on A.seller = P.id
        WHERE A.category = 10 and (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')""",
    "q4": """SELECT Q.category, AVG(Q.final) FROM (
            SELECT MAX(B.price) AS final, A.category
            FROM auction A, bid B
            WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
            GROUP BY A.id, A.category
        ) Q GROUP BY Q.category""",
    "q5": """SELECT AuctionBids.auction, AuctionBids.num
        FROM (
          SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
          FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
          GROUP BY auction, window_start, window_end
        ) AS AuctionBids
        JOIN (
          SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
          FROM (
            SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
            GROUP BY auction, window_start, window_end
          ) AS CountBids
          GROUP BY CountBids.starttime, CountBids.endtime
        ) AS MaxBids
        ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
           AND AuctionBids.num >= MaxBids.maxn""",
    "q7": """SELECT B.auction, B.price, B.bidder, B.date_time, B.extra
        FROM bid B
        JOIN (
          SELECT MAX(price) AS maxprice, window_end as date_time
          FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY window_start, window_end
        ) B1
        ON B.price = B1.maxprice
        WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time""",
    "q8": """SELECT P.id, P.name, P.starttime
        FROM (
          SELECT id, name, window_start AS starttime, window_end AS endtime
          FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY id, name, window_start, window_end
        ) P
        JOIN (
          SELECT seller, window_start AS starttime, window_end AS endtime
          FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
          GROUP BY seller, window_start, window_end
        ) A
        ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime""",
    "q9": """SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
               auction, bidder, price, bid_date_time, bid_extra
        FROM (
          SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
            ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
          FROM auction A, bid B
          WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
        )
        WHERE rownum <= 1""",
    "q10": """SELECT auction, bidder, price, date_time, extra,
               DATE_FORMAT(date_time, 'yyyy-MM-dd'), DATE_FORMAT(date_time, 'HH:mm')
        FROM bid""",
    "q11": """SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
        FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
        GROUP BY bidder, window_start, window_end""",
    "q12": """SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
        FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
        GROUP BY bidder, window_start, window_end""",
    "q13": """SELECT B.auction, B.bidder, B.price, B.date_time, S.`value`
        FROM bid B JOIN (SELECT `key`, CONCAT('value-', CAST(`key` AS STRING)) AS `value` FROM side_keys) S
        ON MOD(B.auction, 10000) = S.`key`""",
    "q14": """SELECT auction, bidder, 0.908 * price as price,
            CASE
                WHEN HOUR(date_time) >= 8 AND HOUR(date_time) <= 18 THEN 'dayTime'
                WHEN HOUR(date_time) <= 6 OR HOUR(date_time) >= 20 THEN 'nightTime'
                ELSE 'otherTime'
            END AS bidTimeType,
            date_time, extra,
            CHAR_LENGTH(extra) - CHAR_LENGTH(REPLACE(extra, 'c', '')) AS c_counts
        FROM bid
        WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": "SELECT DATE_FORMAT(date_time, 'yyyy-MM-dd') as `day`," + COUNT_BANDS + DISTINCT_BANDS
    + " FROM bid GROUP BY DATE_FORMAT(date_time, 'yyyy-MM-dd')",
    "q16": "SELECT channel, DATE_FORMAT(date_time, 'yyyy-MM-dd') as `day`, max(DATE_FORMAT(date_time, 'HH:mm')) as `minute`,"
    + COUNT_BANDS + DISTINCT_BANDS + " FROM bid GROUP BY channel, DATE_FORMAT(date_time, 'yyyy-MM-dd')",
    "q17": "SELECT auction, DATE_FORMAT(date_time, 'yyyy-MM-dd') as `day`," + COUNT_BANDS + """,
        min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
        FROM bid GROUP BY auction, DATE_FORMAT(date_time, 'yyyy-MM-dd')""",
    "q18": """SELECT auction, bidder, price, channel, url, date_time, extra
        FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
              FROM bid)
        WHERE rank_number <= 1""",
    "q19": """SELECT * FROM
        (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
        WHERE rank_number <= 10""",
    "q20": """SELECT auction, bidder, price, channel, url, B.date_time, B.extra,
            item_name, description, initial_bid, reserve, A.date_time, expires, seller, category, A.extra
        FROM bid AS B INNER JOIN auction AS A on B.auction = A.id
        WHERE A.category = 10""",
    "q21": """SELECT auction, bidder, price, channel,
            CASE
                WHEN lower(channel) = 'apple' THEN '0'
                WHEN lower(channel) = 'google' THEN '1'
                WHEN lower(channel) = 'facebook' THEN '2'
                WHEN lower(channel) = 'baidu' THEN '3'
                ELSE REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)
                END
            AS channel_id FROM bid
            where REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2) is not null or
                  lower(channel) in ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """SELECT auction, bidder, price, channel,
            SPLIT_INDEX(url, '/', 3) as dir1,
            SPLIT_INDEX(url, '/', 4) as dir2,
            SPLIT_INDEX(url, '/', 5) as dir3 FROM bid""",
}


def environment(parallelism):
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", str(parallelism))
    conf.set("table.exec.mini-batch.enabled", "true")
    conf.set("table.exec.mini-batch.allow-latency", "2s")
    conf.set("table.exec.mini-batch.size", "5000")
    conf.set("table.optimizer.distinct-agg.split.enabled", "true")
    return env


def run(query, directory, parallelism):
    env = environment(parallelism)
    for name, columns in TABLES.items():
        env.execute_sql(
            f"CREATE TABLE {name} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) "
            f"WITH ('connector' = 'filesystem', 'path' = 'file://{directory}/{name}', 'format' = 'csv')"
        )
    env.execute_sql(
        "CREATE TABLE side_keys (`key` BIGINT) WITH ('connector' = 'datagen', "
        "'fields.key.kind' = 'sequence', 'fields.key.start' = '0', 'fields.key.end' = '9999')"
    )
    started = time.time()
    env.execute_sql(
        f"CREATE TABLE out_{query} WITH ('connector' = 'blackhole') AS {QUERIES[query]}"
    ).wait()
    return time.time() - started


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--empty-dir", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--no-empty", action="store_true", help="skip the empty-input runs (a syntax check)")
    a = p.parse_args()
    # The first job in a process also starts the JVM side: not counted.
    run("q0", a.empty_dir, a.parallelism)
    for q in a.queries.split(","):
        if q not in QUERIES:
            print(json.dumps({"query": q, "unsupported": True}), flush=True)
            continue
        try:
            empty = 0.0 if a.no_empty else run(q, a.empty_dir, a.parallelism)
            seconds = run(q, a.dir, a.parallelism)
            print(json.dumps({"query": q, "seconds": seconds, "empty_seconds": empty}), flush=True)
        except Exception as e:  # a query Flink cannot run is reported, not fatal
            print(json.dumps({"query": q, "error": str(e).splitlines()[0][:300]}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
