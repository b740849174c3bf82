"""psycopg 3 against Weir: the extended protocol with parameters, type
conversion, COPY, transactions and SQLSTATE errors, as a Python app sees them."""

import datetime
import decimal
import sys

import psycopg
from psycopg import errors

url = sys.argv[1]

with psycopg.connect(url, autocommit=True) as conn:
    conn.execute(
        "CREATE TABLE py (id bigint PRIMARY KEY, name text NOT NULL, price numeric(8,2), "
        "day date, at timestamptz, ok boolean, ratio double precision)"
    )
    conn.execute(
        "INSERT INTO py VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (1, "one", decimal.Decimal("9.99"), datetime.date(2026, 11, 26),
         datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc), True, 0.25),
    )
    with conn.cursor() as cur:
        with cur.copy("COPY py (id, name, price) FROM STDIN") as copy:
            copy.write_row((2, "two", decimal.Decimal("1.50")))
            copy.write_row((3, "three", None))
    conn.execute("CREATE MATERIALIZED VIEW py_total AS SELECT count(*) AS n, sum(price) AS total FROM py")

    row = conn.execute("SELECT name, price, day, at, ok, ratio FROM py WHERE id = %s", (1,)).fetchone()
    assert row == ("one", decimal.Decimal("9.99"), datetime.date(2026, 11, 26),
                   datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.timezone.utc), True, 0.25), row
    # Binary results too.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, name, price FROM py ORDER BY id")
        assert cur.fetchall() == [(1, "one", decimal.Decimal("9.99")), (2, "two", decimal.Decimal("1.50")), (3, "three", None)]
    assert conn.execute("SELECT n, total FROM py_total").fetchone() == (3, decimal.Decimal("11.49"))

    try:
        conn.execute("INSERT INTO py VALUES (%s, %s)", (1, "again"))
        raise AssertionError("duplicate key accepted")
    except errors.UniqueViolation:
        pass
    try:
        conn.execute("SELECT * FROM nowhere")
        raise AssertionError("missing table accepted")
    except errors.UndefinedTable:
        pass

# Without autocommit psycopg wraps statements in BEGIN ... COMMIT.
with psycopg.connect(url) as conn:
    conn.execute("INSERT INTO py (id, name) VALUES (%s, %s)", (4, "four"))
    conn.commit()
    assert conn.execute("SELECT n FROM py_total").fetchone() == (4,)

print("ok")
