-- Nexmark q19: the 10 highest bids of each auction. Standard form (TopK
-- through row_number).
SELECT *
FROM (
    SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
    FROM bid
) t
WHERE rank_number <= 10
