CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, product_id int, qty int, placed date);
CREATE TABLE customers (id int PRIMARY KEY, name text, region text);
CREATE TABLE products (id int PRIMARY KEY, category text, price numeric(8,2));
