-- Nexmark q0: passthrough. Standard form.
SELECT auction, bidder, price, date_time, extra FROM bid
