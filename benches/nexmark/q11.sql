-- Nexmark q11: user sessions. Windowed: SESSION(10 s gap) written with
-- window functions: a bid opens a session when its bidder's previous bid
-- is more than 10 s older (lag), a running sum numbers the sessions, and
-- each session is one group. The sum's frame is the default RANGE one, so
-- bids tied in time share a session whichever of them lag saw first.
WITH marked AS (
    SELECT bidder, date_time,
           CASE WHEN lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time) >= date_time - INTERVAL '10 seconds'
                THEN 0 ELSE 1 END AS opens
    FROM bid
),
numbered AS (
    SELECT bidder, date_time,
           sum(opens) OVER (PARTITION BY bidder ORDER BY date_time) AS session
    FROM marked
)
SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime, max(date_time) + INTERVAL '10 seconds' AS endtime
FROM numbered
GROUP BY bidder, session
