-- Nexmark q5: hot items. Windowed: HOP(10 s size, 2 s slide) written as
-- each bid joined to the 5 windows it falls in, each window named by its
-- start (date_bin to the 2 s slide, minus 0 to 4 slides).
WITH hop AS (
    SELECT b.auction, date_bin(INTERVAL '2 seconds', b.date_time) - k.back AS starttime
    FROM bid b, (VALUES (INTERVAL '0 seconds'), (INTERVAL '2 seconds'), (INTERVAL '4 seconds'),
                        (INTERVAL '6 seconds'), (INTERVAL '8 seconds')) AS k(back)
),
auction_bids AS (
    SELECT auction, count(*) AS num, starttime FROM hop GROUP BY auction, starttime
),
max_bids AS (
    SELECT max(num) AS maxn, starttime FROM auction_bids GROUP BY starttime
)
SELECT a.auction, a.num
FROM auction_bids a JOIN max_bids m ON a.starttime = m.starttime AND a.num >= m.maxn
