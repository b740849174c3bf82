-- Nexmark q8: monitor new users. Windowed: TUMBLE(10 s) written as
-- date_bin.
SELECT p.id, p.name, p.starttime
FROM (
    SELECT id, name, date_bin(INTERVAL '10 seconds', date_time) AS starttime
    FROM person
    GROUP BY id, name, date_bin(INTERVAL '10 seconds', date_time)
) p
JOIN (
    SELECT seller, date_bin(INTERVAL '10 seconds', date_time) AS starttime
    FROM auction
    GROUP BY seller, date_bin(INTERVAL '10 seconds', date_time)
) a ON p.id = a.seller AND p.starttime = a.starttime
