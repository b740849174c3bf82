//! psql's backslash commands and tab completion against Weir's
//! `pg_catalog`, and the `information_schema` and `weir_catalog`
//! relations, with the real psql client.

mod common;

use std::process::Command;

/// Run psql with `commands` (each a `-c`): its exit success, stdout and
/// stderr.
fn run(server: &common::Server, commands: &[&str]) -> (bool, String, String) {
    let mut args = vec![server.url(), "-X".into(), "-v".into(), "ON_ERROR_STOP=1".into()];
    for c in commands {
        args.push("-c".into());
        args.push((*c).into());
    }
    let out = Command::new("psql")
        .args(&args)
        .output()
        .expect("psql is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Run psql with `commands`, returning stdout; fail on anything on stderr.
fn psql(server: &common::Server, commands: &[&str]) -> String {
    let (ok, stdout, stderr) = run(server, commands);
    assert!(
        ok && stderr.is_empty(),
        "psql {commands:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

#[test]
fn backslash_commands_describe_the_catalog() {
    let server = common::Server::start();
    psql(
        &server,
        &[
            "CREATE TABLE orders (id int PRIMARY KEY, region varchar(10) NOT NULL, amount numeric(8,2))",
            "CREATE VIEW big AS SELECT id FROM orders WHERE amount > 100",
            "CREATE MATERIALIZED VIEW totals AS SELECT region, sum(amount) AS total FROM orders GROUP BY region",
            "CREATE INDEX orders_region ON orders (region, amount DESC)",
        ],
    );
    let list = psql(&server, &["\\d"]);
    for line in [
        " public | big    | view              | weir",
        " public | orders | table             | weir",
        " public | totals | materialized view | weir",
    ] {
        assert!(list.contains(line), "{list}");
    }
    let tables = psql(&server, &["\\dt"]);
    assert!(
        tables.contains("orders") && !tables.contains("totals"),
        "{tables}"
    );
    let views = psql(&server, &["\\dv"]);
    assert!(views.contains("big") && !views.contains("orders"), "{views}");
    let mvs = psql(&server, &["\\dm"]);
    assert!(mvs.contains("totals") && !mvs.contains("orders"), "{mvs}");
    // The index made and the one behind the primary key, as PostgreSQL
    // lists them.
    let indexes = psql(&server, &["\\di"]);
    for line in [
        " public | orders_pkey   | index | weir  | orders",
        " public | orders_region | index | weir  | orders",
    ] {
        assert!(indexes.contains(line), "{indexes}");
    }
    psql(&server, &["\\di+"]);
    let schemas = psql(&server, &["\\dn"]);
    assert!(
        schemas.contains(" public ") && schemas.contains("weir_catalog"),
        "{schemas}"
    );
    let databases = psql(&server, &["\\l"]);
    assert!(databases.contains(" weir | weir  | UTF8"), "{databases}");

    let described = psql(&server, &["\\d orders"]);
    assert!(described.contains("Table \"public.orders\""), "{described}");
    for line in [
        " id     | integer               |           | not null |",
        " region | character varying(10) |           | not null |",
        " amount | numeric(8,2)          |           |          |",
    ] {
        assert!(described.contains(line), "{described}");
    }
    for line in [
        "Indexes:",
        "    \"orders_pkey\" PRIMARY KEY, btree (id)",
        "    \"orders_region\" btree (region, amount DESC)",
    ] {
        assert!(described.contains(line), "{described}");
    }
    let described = psql(&server, &["\\d orders_region"]);
    for line in [
        "Index \"public.orders_region\"",
        " region | character varying(10) | yes  | region",
        "btree, for table \"public.orders\"",
    ] {
        assert!(described.contains(line), "{described}");
    }
    let described = psql(&server, &["\\d totals"]);
    assert!(
        described.contains("Materialized view \"public.totals\""),
        "{described}"
    );
    assert!(described.contains(" total  | numeric(18,2)"), "{described}");
    // The `+` forms: storage columns, the view's definition, ACLs.
    let described = psql(&server, &["\\d+ orders"]);
    assert!(
        described.contains(" id     | integer               |           | not null |         | plain   |"),
        "{described}"
    );
    let described = psql(&server, &["\\d+ big"]);
    assert!(
        described.contains("View definition:") && described.contains("WHERE amount > 100"),
        "{described}"
    );
    for command in ["\\dt+", "\\dv+", "\\dm+", "\\dn+", "\\l+"] {
        psql(&server, &[command]);
    }
    let roles = psql(&server, &["\\du"]);
    assert!(roles.contains(" weir      | Superuser"), "{roles}");
    // Privileges: the owner's defaults, no column grants, no policies
    // (PostgreSQL prints empty cells for all three).
    let privileges = psql(&server, &["\\dp orders"]);
    assert!(
        privileges.contains(" public | orders | table |                   |                   | "),
        "{privileges}"
    );
    assert!(psql(&server, &["\\z"]).contains(" big "));

    let expanded = psql(
        &server,
        &[
            "\\x",
            "SELECT name, kind FROM weir_catalog.relations WHERE name = 'big'",
        ],
    );
    assert!(
        expanded.contains("name | big") && expanded.contains("kind | view"),
        "{expanded}"
    );
    let deps = psql(
        &server,
        &["SELECT relation, depends_on FROM weir_catalog.dependencies ORDER BY 1"],
    );
    assert!(
        deps.contains(" big      | orders") && deps.contains(" totals   | orders"),
        "{deps}"
    );
    let columns = psql(
        &server,
        &[
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position",
        ],
    );
    assert!(
        columns.contains(" region      | character varying | NO"),
        "{columns}"
    );
    let definition = psql(&server, &["SELECT definition FROM pg_catalog.pg_matviews"]);
    assert!(definition.contains("GROUP BY region"), "{definition}");

    // weir_catalog's relations describe like PostgreSQL's system views:
    // by their schema-qualified name, listed only when asked for by schema.
    let sources = psql(&server, &["\\d weir_catalog.sources"]);
    assert!(
        sources.contains("View \"weir_catalog.sources\"") && sources.contains(" rows_ingested  | bigint "),
        "{sources}"
    );
    let sizes = psql(&server, &["\\d weir_catalog.arrangement_sizes"]);
    assert!(sizes.contains(" size_bytes     | bigint "), "{sizes}");
    let views = psql(&server, &["\\dv"]);
    assert!(!views.contains("weir_catalog"), "{views}");
    let system = psql(&server, &["\\dv weir_catalog.*"]);
    for name in [
        "arrangement_sizes",
        "columns",
        "dependencies",
        "relations",
        "sources",
    ] {
        assert!(system.contains(&format!(" weir_catalog | {name} ")), "{system}");
    }
}

#[test]
fn tab_completion_lists_relations() {
    let server = common::Server::start();
    psql(
        &server,
        &[
            "CREATE TABLE weather (city text)",
            "CREATE TABLE wind (speed int)",
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tab_complete.py");
    let out = Command::new("python3")
        .args([script, &server.url(), "SELECT * FROM w"])
        .output()
        .expect("python3 is installed");
    let echoed = String::from_utf8_lossy(&out.stdout);
    assert!(echoed.contains("weather") && echoed.contains("wind"), "{echoed}");
}
