-- Nexmark q12: bids per bidder in tumbling windows. The standard form
-- windows by processing time (PROCTIME(), TUMBLE 10 s), which no two runs
-- agree on; this stand-in windows by event time (date_bin 10 s) so the
-- answer can be checked.
SELECT bidder, count(*) AS bid_count,
       date_bin(INTERVAL '10 seconds', date_time) AS starttime,
       date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS endtime
FROM bid
GROUP BY bidder, date_bin(INTERVAL '10 seconds', date_time)
