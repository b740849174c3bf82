-- Nexmark q6: average selling price by seller, over each seller's last 10
-- closed auctions. Flink's form, with the closing bid's time taken as the
-- max of its bids' times (Flink's form selects it ungrouped) and the
-- auction id breaking ties in time, so the frame is well defined.
SELECT q.seller,
       avg(q.final) OVER (PARTITION BY q.seller ORDER BY q.date_time, q.id ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_price
FROM (
    SELECT a.id, max(b.price) AS final, a.seller, max(b.date_time) AS date_time
    FROM auction a, bid b
    WHERE a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
    GROUP BY a.id, a.seller
) q
