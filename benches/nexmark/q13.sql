-- Nexmark q13: bounded side input join. The standard form joins each bid
-- with a side table of 10,000 keys read from a file (FOR SYSTEM_TIME AS OF
-- the bid's processing time); here the side table is generate_series with
-- each key's value, joined on auction mod 10,000.
SELECT b.auction, b.bidder, b.price, b.date_time, s.value
FROM bid b
JOIN (SELECT key, 'value-' || key AS value FROM generate_series(0, 9999) AS t(key)) s
  ON b.auction % 10000 = s.key
