-- Nexmark q7: highest bid. Windowed: TUMBLE(10 s) written as date_bin;
-- a window's end is its start plus 10 s.
SELECT b.auction, b.price, b.bidder, b.date_time, b.extra
FROM bid b
JOIN (
    SELECT max(price) AS maxprice, date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS window_end
    FROM bid
    GROUP BY date_bin(INTERVAL '10 seconds', date_time)
) b1 ON b.price = b1.maxprice
WHERE b.date_time BETWEEN b1.window_end - INTERVAL '10 seconds' AND b1.window_end
