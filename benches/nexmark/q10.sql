-- Nexmark q10: log to file system, as the projection it writes (a view
-- rather than a partitioned file sink). to_char stands in for DATE_FORMAT.
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS dt, to_char(date_time, '%H:%M') AS hm
FROM bid
