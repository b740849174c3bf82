-- Nexmark q2: selection. Standard form (MOD written as %).
SELECT auction, price FROM bid WHERE auction % 123 = 0
