//! The system catalogs: `pg_catalog`, `information_schema` and
//! `weir_catalog`, computed from the catalog when a statement reads them.
//!
//! `pg_catalog` holds what psql and drivers read (relations, columns,
//! types, schemas, the database), in PostgreSQL's shapes and OIDs, so
//! `\d`, `\dt`, `\d name` and tab completion work. Relations Weir has no
//! counterpart for (policies, publications, inheritance, ...) exist and are
//! empty. `weir_catalog` describes Weir's own objects, with definitions and
//! dependencies. This module only reads [`crate::catalog`]; it never
//! changes it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast;
use weir_sql::RelationKind;

use crate::catalog::{Entry, kind_name};
use crate::values::pg_type;

const PG_CATALOG_OID: i64 = 11;
const PUBLIC_OID: i64 = 2200;
const INFORMATION_SCHEMA_OID: i64 = 13000;
const WEIR_CATALOG_OID: i64 = 16000;
/// User relations get OIDs from here up, as in PostgreSQL.
const FIRST_USER_OID: i64 = 16384;
const DATABASE: &str = "weir";
const OWNER: &str = "weir";
const OWNER_OID: i64 = 10;

/// The relation oid of a catalog entry.
pub fn relation_oid(e: &Entry) -> i64 {
    FIRST_USER_OID + e.id as i64
}

/// The relations of a system schema.
pub fn table_names(schema: &str) -> Vec<String> {
    let names: &[&str] = match schema {
        "pg_catalog" => &[
            "pg_am",
            "pg_attrdef",
            "pg_auth_members",
            "pg_attribute",
            "pg_class",
            "pg_collation",
            "pg_constraint",
            "pg_database",
            "pg_description",
            "pg_extension",
            "pg_index",
            "pg_indexes",
            "pg_inherits",
            "pg_matviews",
            "pg_namespace",
            "pg_policy",
            "pg_proc",
            "pg_publication",
            "pg_publication_namespace",
            "pg_publication_rel",
            "pg_roles",
            "pg_settings",
            "pg_statistic_ext",
            "pg_tables",
            "pg_tablespace",
            "pg_trigger",
            "pg_type",
            "pg_user",
            "pg_views",
        ],
        "information_schema" => &["columns", "schemata", "tables", "views"],
        "weir_catalog" => &[
            "arrangement_sizes",
            "columns",
            "dependencies",
            "relations",
            "sources",
        ],
        _ => &[],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The `pg_catalog` relations that are always empty here.
pub const EMPTY_RELATIONS: &[&str] = &[
    "pg_attrdef",
    "pg_collation",
    "pg_constraint",
    "pg_description",
    "pg_extension",
    "pg_inherits",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_statistic_ext",
    "pg_tablespace",
    "pg_trigger",
];

/// Whether every branch of `q` inner-joins one of [`EMPTY_RELATIONS`], so
/// its answer is empty whatever its select list says. psql's `\d` asks
/// such questions (policies, publications, statistics) in SQL beyond what
/// Weir plans; the answer is known without planning.
pub fn reads_empty_relation(q: &ast::Query) -> bool {
    fn empty_table(t: &ast::TableFactor) -> bool {
        match t {
            ast::TableFactor::Table { name, .. } => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| EMPTY_RELATIONS.contains(&i.value.as_str())),
            _ => false,
        }
    }
    fn branch(body: &ast::SetExpr) -> bool {
        match body {
            ast::SetExpr::Select(s) => s.from.iter().any(|twj| {
                empty_table(&twj.relation)
                    || twj.joins.iter().any(|j| {
                        matches!(
                            j.join_operator,
                            ast::JoinOperator::Inner(_) | ast::JoinOperator::Join(_)
                        ) && empty_table(&j.relation)
                    })
            }),
            ast::SetExpr::SetOperation { left, right, .. } => branch(left) && branch(right),
            ast::SetExpr::Query(q) => branch(&q.body),
            _ => false,
        }
    }
    branch(&q.body)
}

/// Whether `statement` reads `weir_catalog.arrangement_sizes`, the one
/// system relation the workers measure when it is read.
pub fn reads_arrangement_sizes(statement: &ast::Statement) -> bool {
    ast::visit_relations(statement, |name| {
        let sizes = name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("arrangement_sizes"));
        if sizes {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// A column of a system relation: its name and type.
type Col = (&'static str, DataType);

fn text(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}
fn int(i: i64) -> ScalarValue {
    ScalarValue::Int64(Some(i))
}
fn boolean(b: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(b))
}
fn null_text() -> ScalarValue {
    ScalarValue::Utf8(None)
}

/// PostgreSQL's `text[]`, as the ACL and option columns are.
fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// Build a batch from rows of scalars (columns typed by `cols`).
fn batch(cols: &[Col], rows: Vec<Vec<ScalarValue>>) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            if rows.is_empty() {
                return new_null_array(t, 0);
            }
            let values = rows.iter().map(|r| r[i].clone());
            let array = ScalarValue::iter_to_array(values).expect("system rows are well typed");
            if array.data_type() == t {
                array
            } else if array.null_count() == array.len() {
                // A cast would make NULL text a list holding one NULL.
                new_null_array(t, array.len())
            } else {
                arrow::compute::cast(&array, t).expect("system rows cast to their column types")
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("system batch is well formed")
}

/// An empty relation with these columns.
fn empty(cols: &[Col]) -> RecordBatch {
    batch(cols, Vec::new())
}

/// The PostgreSQL type oid and typmod of a column.
fn column_type(e: &Entry, i: usize) -> (i64, i64) {
    let field = e.schema.field(i);
    let max_length = e.columns.get(i).and_then(|c| c.max_length);
    match (field.data_type(), max_length) {
        (_, Some(n)) => (1043, n as i64 + 4),
        (DataType::Decimal128(p, s), _) => (1700, ((*p as i64) << 16 | *s as i64) + 4),
        (t, None) => (pg_type(t).oid() as i64, -1),
    }
}

/// A relation or index as `pg_class` and `pg_attribute` describe it.
struct Described {
    oid: i64,
    name: String,
    namespace: i64,
    /// `pg_class.relkind`: `r`, `v`, `m` or `i`.
    relkind: &'static str,
    /// `pg_class.relam`: the access method's oid in `pg_am` (0 for a view).
    am: i64,
    has_index: bool,
    columns: Vec<DescribedColumn>,
}

struct DescribedColumn {
    name: String,
    type_oid: i64,
    typmod: i64,
    not_null: bool,
}

impl DescribedColumn {
    fn of(e: &Entry, i: usize) -> DescribedColumn {
        let (type_oid, typmod) = column_type(e, i);
        DescribedColumn {
            name: e.schema.field(i).name().clone(),
            type_oid,
            typmod,
            not_null: !nullable(e, i),
        }
    }
}

/// Every relation and index `\d` can describe: the user's, in `public`,
/// and `weir_catalog`'s own (as views, at OIDs `pg_table_is_visible`
/// treats as off the search path, so `\dv` does not list them).
fn described(entries: &[Entry]) -> Vec<Described> {
    let indexes = listed_indexes(entries);
    let mut out: Vec<Described> = entries
        .iter()
        .map(|e| Described {
            oid: relation_oid(e),
            name: e.name.clone(),
            namespace: PUBLIC_OID,
            relkind: relkind(e.kind),
            am: if e.kind == RelationKind::View { 0 } else { HEAP_AM },
            has_index: indexes.iter().any(|i| i.table.id == e.id),
            columns: (0..e.schema.fields().len())
                .map(|i| DescribedColumn::of(e, i))
                .collect(),
        })
        .collect();
    out.extend(indexes.iter().map(|i| {
        Described {
            oid: i.oid,
            name: i.name.clone(),
            namespace: PUBLIC_OID,
            relkind: "i",
            am: if i.method == "hash" { HASH_AM } else { BTREE_AM },
            has_index: false,
            columns: i
                .columns
                .iter()
                .map(|c| DescribedColumn::of(i.table, *c))
                .collect(),
        }
    }));
    let first = weir_sql::pg_compat::WEIR_CATALOG_RELATION_OIDS.start;
    for (i, name) in table_names("weir_catalog").into_iter().enumerate() {
        let Some(b) = table("weir_catalog", &name, &[], &Default::default(), None) else {
            continue;
        };
        out.push(Described {
            oid: first + i as i64,
            columns: b
                .schema()
                .fields()
                .iter()
                .map(|f| DescribedColumn {
                    name: f.name().clone(),
                    type_oid: pg_type(f.data_type()).oid() as i64,
                    typmod: -1,
                    not_null: false,
                })
                .collect(),
            name,
            namespace: WEIR_CATALOG_OID,
            relkind: "v",
            am: 0,
            has_index: false,
        });
    }
    out
}

/// `pg_am`'s access methods.
const HEAP_AM: i64 = 2;
const BTREE_AM: i64 = 403;
const HASH_AM: i64 = 405;
/// The indexes backing primary keys and `UNIQUE` constraints have no
/// catalog ids; their OIDs are made from their table's id from here up.
const CONSTRAINT_INDEX_OIDS: i64 = 1 << 30;

/// An index as `pg_class`, `pg_index` and `pg_indexes` list it: one made
/// by `CREATE INDEX`, or the one PostgreSQL backs a primary key or a
/// `UNIQUE` constraint with (named as the constraint).
struct ListedIndex<'a> {
    oid: i64,
    name: String,
    table: &'a Entry,
    columns: Vec<usize>,
    unique: bool,
    primary: bool,
    method: &'static str,
    definition: String,
}

fn listed_indexes(entries: &[Entry]) -> Vec<ListedIndex<'_>> {
    let mut out = Vec::new();
    for e in entries {
        for (c, i) in e.constraint_indexes() {
            out.push(ListedIndex {
                oid: CONSTRAINT_INDEX_OIDS + ((e.id as i64) << 8) + c as i64,
                definition: i.definition(e),
                name: i.name,
                table: e,
                columns: i.columns.iter().map(|c| c.column).collect(),
                unique: i.unique,
                primary: c == 0 && !e.primary_key.is_empty(),
                method: i.method,
            });
        }
        for i in &e.indexes {
            out.push(ListedIndex {
                oid: FIRST_USER_OID + i.id as i64,
                name: i.name.clone(),
                table: e,
                columns: i.columns.iter().map(|c| c.column).collect(),
                unique: i.unique,
                primary: false,
                method: i.method,
                definition: i.definition(e),
            });
        }
    }
    out
}

fn nullable(e: &Entry, i: usize) -> bool {
    e.columns.get(i).is_none_or(|c| c.nullable)
}

fn relkind(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Table => "r",
        RelationKind::View => "v",
        RelationKind::MaterializedView => "m",
    }
}

/// The types `pg_type` lists: oid, name, length, array oid.
const TYPES: &[(i64, &str, i64, i64)] = &[
    (16, "bool", 1, 1000),
    (17, "bytea", -1, 1001),
    (20, "int8", 8, 1016),
    (21, "int2", 2, 1005),
    (23, "int4", 4, 1007),
    (25, "text", -1, 1009),
    (26, "oid", 4, 1028),
    (114, "json", -1, 199),
    (700, "float4", 4, 1021),
    (701, "float8", 8, 1022),
    (1042, "bpchar", -1, 1014),
    (1043, "varchar", -1, 1015),
    (1082, "date", 4, 1182),
    (1083, "time", 8, 1183),
    (1114, "timestamp", 8, 1115),
    (1184, "timestamptz", 8, 1185),
    (1186, "interval", 16, 1187),
    (1700, "numeric", -1, 1231),
    (2950, "uuid", 16, 2951),
    (3802, "jsonb", -1, 3807),
];

/// The rows of `weir_catalog.arrangement_sizes`: the workers' answer
/// (see [`weir_protocol::arrangement_sizes_schema`]) with each
/// arrangement's relation named.
fn arrangement_rows(sizes: &RecordBatch, entries: &[Entry]) -> Vec<Vec<ScalarValue>> {
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    let ints = |i: usize| -> &Int64Array { sizes.column(i).as_primitive::<Int64Type>() };
    let operators = sizes.column(1).as_string::<i32>();
    (0..sizes.num_rows())
        .map(|r| {
            let id = ints(0).is_valid(r).then(|| ints(0).value(r));
            let name = id.and_then(|id| entries.iter().find(|e| e.id as i64 == id).map(|e| e.name.clone()));
            vec![
                ScalarValue::Utf8(name),
                ScalarValue::Int64(id),
                text(operators.value(r)),
                int(ints(2).value(r)),
                int(ints(3).value(r)),
                int(ints(4).value(r)),
                int(ints(5).value(r)),
                int(ints(6).value(r)),
            ]
        })
        .collect()
}

/// Compute the system relation `schema.name` over `entries`.
pub fn table(
    schema: &str,
    name: &str,
    entries: &[Entry],
    sources: &std::collections::BTreeMap<String, crate::ingest::Source>,
    arrangement_sizes: Option<&RecordBatch>,
) -> Option<RecordBatch> {
    use DataType::{Boolean as B, Int64 as I, Utf8 as T};
    let b = match (schema, name) {
        ("pg_catalog", "pg_namespace") => batch(
            &[
                ("oid", I),
                ("nspname", T),
                ("nspowner", I),
                ("nspacl", text_array()),
            ],
            [
                (PG_CATALOG_OID, "pg_catalog"),
                (PUBLIC_OID, "public"),
                (INFORMATION_SCHEMA_OID, "information_schema"),
                (WEIR_CATALOG_OID, "weir_catalog"),
            ]
            .into_iter()
            .map(|(oid, n)| vec![int(oid), text(n), int(OWNER_OID), null_text()])
            .collect(),
        ),
        ("pg_catalog", "pg_class") => batch(
            &[
                ("oid", I),
                ("relname", T),
                ("relnamespace", I),
                ("reltype", I),
                ("reloftype", I),
                ("relowner", I),
                ("relam", I),
                ("reltablespace", I),
                ("reltoastrelid", I),
                ("relhasindex", B),
                ("relisshared", B),
                ("relpersistence", T),
                ("relkind", T),
                ("relnatts", I),
                ("relchecks", I),
                ("relhasrules", B),
                ("relhastriggers", B),
                ("relhassubclass", B),
                ("relrowsecurity", B),
                ("relforcerowsecurity", B),
                ("relispopulated", B),
                ("relreplident", T),
                ("relispartition", B),
                ("relpartbound", T),
                ("reloptions", text_array()),
                ("relacl", text_array()),
            ],
            described(entries)
                .iter()
                .map(|r| {
                    vec![
                        int(r.oid),
                        text(&r.name),
                        int(r.namespace),
                        int(0),
                        int(0),
                        int(OWNER_OID),
                        int(r.am),
                        int(0),
                        int(0),
                        boolean(r.has_index),
                        boolean(false),
                        text("p"),
                        text(r.relkind),
                        int(r.columns.len() as i64),
                        int(0),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        boolean(false),
                        boolean(true),
                        text("d"),
                        boolean(false),
                        null_text(),
                        null_text(),
                        null_text(),
                    ]
                })
                .collect(),
        ),
        ("pg_catalog", "pg_attribute") => batch(
            &[
                ("attrelid", I),
                ("attname", T),
                ("atttypid", I),
                ("attlen", I),
                ("attnum", I),
                ("atttypmod", I),
                ("attndims", I),
                ("attnotnull", B),
                ("atthasdef", B),
                ("attidentity", T),
                ("attgenerated", T),
                ("attisdropped", B),
                ("attcollation", I),
                ("attstorage", T),
                ("attcompression", T),
                ("attstattarget", I),
                ("attacl", text_array()),
            ],
            described(entries)
                .iter()
                .flat_map(|r| {
                    r.columns.iter().enumerate().map(move |(i, c)| {
                        vec![
                            int(r.oid),
                            text(&c.name),
                            int(c.type_oid),
                            int(-1),
                            int(i as i64 + 1),
                            int(c.typmod),
                            int(0),
                            boolean(c.not_null),
                            boolean(false),
                            text(""),
                            text(""),
                            boolean(false),
                            int(0),
                            // Plain storage, no compression, default
                            // statistics target: what psql's \d+ shows.
                            text("p"),
                            text(""),
                            int(-1),
                            null_text(),
                        ]
                    })
                })
                .collect(),
        ),
        ("pg_catalog", "pg_type") => batch(
            &[
                ("oid", I),
                ("typname", T),
                ("typnamespace", I),
                ("typowner", I),
                ("typlen", I),
                ("typtype", T),
                ("typcategory", T),
                ("typelem", I),
                ("typarray", I),
                ("typbasetype", I),
                ("typtypmod", I),
                ("typnotnull", B),
                ("typcollation", I),
                ("typrelid", I),
            ],
            TYPES
                .iter()
                .map(|(oid, n, len, array)| {
                    vec![
                        int(*oid),
                        text(*n),
                        int(PG_CATALOG_OID),
                        int(OWNER_OID),
                        int(*len),
                        text("b"),
                        text("U"),
                        int(0),
                        int(*array),
                        int(0),
                        int(-1),
                        boolean(false),
                        int(0),
                        int(0),
                    ]
                })
                .collect(),
        ),
        ("pg_catalog", "pg_database") => batch(
            &[
                ("oid", I),
                ("datname", T),
                ("datdba", I),
                ("encoding", I),
                ("datlocprovider", T),
                ("datistemplate", B),
                ("datallowconn", B),
                ("datcollate", T),
                ("datctype", T),
                ("daticulocale", T),
                ("datacl", text_array()),
            ],
            vec![vec![
                int(16384),
                text(DATABASE),
                int(OWNER_OID),
                int(6),
                text("c"),
                boolean(false),
                boolean(true),
                text("C.UTF-8"),
                text("C.UTF-8"),
                null_text(),
                ScalarValue::try_from(&DataType::List(Arc::new(Field::new_list_field(T, true))))
                    .expect("null list"),
            ]],
        ),
        ("pg_catalog", "pg_roles") | ("pg_catalog", "pg_user") => batch(
            &[
                ("oid", I),
                ("rolname", T),
                ("usename", T),
                ("rolsuper", B),
                ("usesuper", B),
                ("rolcanlogin", B),
                ("rolinherit", B),
                ("rolcreaterole", B),
                ("rolcreatedb", B),
                ("rolconnlimit", I),
                ("rolvaliduntil", T),
                ("rolreplication", B),
                ("rolbypassrls", B),
            ],
            // The one role: a superuser (psql's `\du`).
            vec![vec![
                int(OWNER_OID),
                text(OWNER),
                text(OWNER),
                boolean(true),
                boolean(true),
                boolean(true),
                boolean(true),
                boolean(true),
                boolean(true),
                int(-1),
                null_text(),
                boolean(true),
                boolean(true),
            ]],
        ),
        ("pg_catalog", "pg_auth_members") => empty(&[("roleid", I), ("member", I), ("admin_option", B)]),
        ("pg_catalog", "pg_am") => batch(
            &[("oid", I), ("amname", T), ("amtype", T)],
            vec![
                vec![int(HEAP_AM), text("heap"), text("t")],
                vec![int(BTREE_AM), text("btree"), text("i")],
                vec![int(HASH_AM), text("hash"), text("i")],
            ],
        ),
        ("pg_catalog", "pg_tables") => batch(
            &[
                ("schemaname", T),
                ("tablename", T),
                ("tableowner", T),
                ("hasindexes", B),
            ],
            entries
                .iter()
                .filter(|e| e.kind == RelationKind::Table)
                .map(|e| {
                    let indexed = !e.constraints().is_empty() || !e.indexes.is_empty();
                    vec![text("public"), text(&e.name), text(OWNER), boolean(indexed)]
                })
                .collect(),
        ),
        ("pg_catalog", "pg_indexes") => batch(
            &[
                ("schemaname", T),
                ("tablename", T),
                ("indexname", T),
                ("tablespace", T),
                ("indexdef", T),
            ],
            listed_indexes(entries)
                .into_iter()
                .map(|i| {
                    vec![
                        text("public"),
                        text(&i.table.name),
                        text(i.name),
                        null_text(),
                        text(i.definition),
                    ]
                })
                .collect(),
        ),
        ("pg_catalog", "pg_views") | ("pg_catalog", "pg_matviews") => {
            let kind = if name == "pg_views" {
                RelationKind::View
            } else {
                RelationKind::MaterializedView
            };
            let cols: &[Col] = if kind == RelationKind::View {
                &[
                    ("schemaname", T),
                    ("viewname", T),
                    ("viewowner", T),
                    ("definition", T),
                ]
            } else {
                &[
                    ("schemaname", T),
                    ("matviewname", T),
                    ("matviewowner", T),
                    ("definition", T),
                ]
            };
            batch(
                cols,
                entries
                    .iter()
                    .filter(|e| e.kind == kind)
                    .map(|e| vec![text("public"), text(&e.name), text(OWNER), text(&e.create_sql)])
                    .collect(),
            )
        }
        ("pg_catalog", "pg_settings") => batch(
            &[("name", T), ("setting", T)],
            vec![
                vec![text("server_version"), text("15.0")],
                vec![text("server_encoding"), text("UTF8")],
            ],
        ),
        ("pg_catalog", "pg_index") => batch(
            &[
                ("indexrelid", I),
                ("indrelid", I),
                ("indnatts", I),
                ("indnkeyatts", I),
                ("indisunique", B),
                ("indnullsnotdistinct", B),
                ("indisprimary", B),
                ("indisexclusion", B),
                ("indimmediate", B),
                ("indisclustered", B),
                ("indisvalid", B),
                ("indcheckxmin", B),
                ("indisready", B),
                ("indislive", B),
                ("indisreplident", B),
                // `int2vector` as PostgreSQL prints it: 1-based, by spaces.
                ("indkey", T),
                ("indexprs", T),
                ("indpred", T),
            ],
            listed_indexes(entries)
                .into_iter()
                .map(|i| {
                    let key: Vec<String> = i.columns.iter().map(|c| (c + 1).to_string()).collect();
                    vec![
                        int(i.oid),
                        int(relation_oid(i.table)),
                        int(i.columns.len() as i64),
                        int(i.columns.len() as i64),
                        boolean(i.unique),
                        boolean(false),
                        boolean(i.primary),
                        boolean(false),
                        boolean(true),
                        boolean(false),
                        boolean(true),
                        boolean(false),
                        boolean(true),
                        boolean(true),
                        boolean(false),
                        text(key.join(" ")),
                        null_text(),
                        null_text(),
                    ]
                })
                .collect(),
        ),
        ("pg_catalog", "pg_constraint") => empty(&[
            ("oid", I),
            ("conname", T),
            ("connamespace", I),
            ("contype", T),
            ("condeferrable", B),
            ("condeferred", B),
            ("conrelid", I),
            ("conindid", I),
            ("confrelid", I),
        ]),
        ("pg_catalog", "pg_attrdef") => empty(&[("oid", I), ("adrelid", I), ("adnum", I), ("adbin", T)]),
        ("pg_catalog", "pg_collation") => empty(&[("oid", I), ("collname", T), ("collnamespace", I)]),
        ("pg_catalog", "pg_description") => empty(&[
            ("objoid", I),
            ("classoid", I),
            ("objsubid", I),
            ("description", T),
        ]),
        ("pg_catalog", "pg_inherits") => empty(&[
            ("inhrelid", I),
            ("inhparent", I),
            ("inhseqno", I),
            ("inhdetachpending", B),
        ]),
        ("pg_catalog", "pg_policy") => empty(&[
            ("oid", I),
            ("polname", T),
            ("polrelid", I),
            ("polcmd", T),
            ("polpermissive", B),
            (
                "polroles",
                DataType::List(Arc::new(Field::new_list_field(I, true))),
            ),
            ("polqual", T),
            ("polwithcheck", T),
        ]),
        ("pg_catalog", "pg_statistic_ext") => empty(&[
            ("oid", I),
            ("stxrelid", I),
            ("stxname", T),
            ("stxnamespace", I),
            ("stxstattarget", I),
            (
                "stxkind",
                DataType::List(Arc::new(Field::new_list_field(T, true))),
            ),
        ]),
        ("pg_catalog", "pg_publication") => empty(&[("oid", I), ("pubname", T), ("puballtables", B)]),
        ("pg_catalog", "pg_publication_rel") => empty(&[
            ("oid", I),
            ("prpubid", I),
            ("prrelid", I),
            ("prqual", T),
            (
                "prattrs",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true))),
            ),
        ]),
        ("pg_catalog", "pg_publication_namespace") => empty(&[("oid", I), ("pnpubid", I), ("pnnspid", I)]),
        ("pg_catalog", "pg_proc") => empty(&[("oid", I), ("proname", T), ("pronamespace", I)]),
        ("pg_catalog", "pg_extension") => empty(&[("oid", I), ("extname", T), ("extversion", T)]),
        ("pg_catalog", "pg_tablespace") => empty(&[("oid", I), ("spcname", T)]),
        ("pg_catalog", "pg_trigger") => empty(&[("oid", I), ("tgrelid", I), ("tgname", T)]),
        ("information_schema", "schemata") => batch(
            &[("catalog_name", T), ("schema_name", T), ("schema_owner", T)],
            ["public", "pg_catalog", "information_schema", "weir_catalog"]
                .into_iter()
                .map(|s| vec![text(DATABASE), text(s), text(OWNER)])
                .collect(),
        ),
        ("information_schema", "tables") => batch(
            &[
                ("table_catalog", T),
                ("table_schema", T),
                ("table_name", T),
                ("table_type", T),
            ],
            entries
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        RelationKind::Table => "BASE TABLE",
                        RelationKind::View => "VIEW",
                        RelationKind::MaterializedView => "MATERIALIZED VIEW",
                    };
                    vec![text(DATABASE), text("public"), text(&e.name), text(kind)]
                })
                .collect(),
        ),
        ("information_schema", "views") => batch(
            &[
                ("table_catalog", T),
                ("table_schema", T),
                ("table_name", T),
                ("view_definition", T),
            ],
            entries
                .iter()
                .filter(|e| e.kind == RelationKind::View)
                .map(|e| vec![text(DATABASE), text("public"), text(&e.name), text(&e.create_sql)])
                .collect(),
        ),
        ("information_schema", "columns") => batch(
            &[
                ("table_catalog", T),
                ("table_schema", T),
                ("table_name", T),
                ("column_name", T),
                ("ordinal_position", I),
                ("column_default", T),
                ("is_nullable", T),
                ("data_type", T),
                ("character_maximum_length", I),
                ("numeric_precision", I),
                ("numeric_scale", I),
                ("udt_name", T),
            ],
            entries
                .iter()
                .flat_map(|e| {
                    e.schema.fields().iter().enumerate().map(move |(i, f)| {
                        let (oid, _) = column_type(e, i);
                        let (precision, scale) = match f.data_type() {
                            DataType::Decimal128(p, s) => (int(*p as i64), int(*s as i64)),
                            _ => (ScalarValue::Int64(None), ScalarValue::Int64(None)),
                        };
                        let udt = TYPES.iter().find(|t| t.0 == oid).map(|t| t.1).unwrap_or("text");
                        vec![
                            text(DATABASE),
                            text("public"),
                            text(&e.name),
                            text(f.name()),
                            int(i as i64 + 1),
                            null_text(),
                            text(if nullable(e, i) { "YES" } else { "NO" }),
                            text(weir_sql::pg_compat::format_type(oid, None)),
                            ScalarValue::Int64(e.columns.get(i).and_then(|c| c.max_length).map(|n| n as i64)),
                            precision,
                            scale,
                            text(udt),
                        ]
                    })
                })
                .collect(),
        ),
        ("weir_catalog", "relations") => batch(
            &[("id", I), ("name", T), ("kind", T), ("definition", T)],
            entries
                .iter()
                .map(|e| {
                    vec![
                        int(e.id as i64),
                        text(&e.name),
                        text(kind_name(e.kind)),
                        text(&e.create_sql),
                    ]
                })
                .collect(),
        ),
        ("weir_catalog", "columns") => batch(
            &[
                ("relation", T),
                ("position", I),
                ("name", T),
                ("type", T),
                ("nullable", B),
            ],
            entries
                .iter()
                .flat_map(|e| {
                    e.schema.fields().iter().enumerate().map(move |(i, f)| {
                        let (oid, typmod) = column_type(e, i);
                        vec![
                            text(&e.name),
                            int(i as i64 + 1),
                            text(f.name()),
                            text(weir_sql::pg_compat::format_type(oid, Some(typmod))),
                            boolean(nullable(e, i)),
                        ]
                    })
                })
                .collect(),
        ),
        ("weir_catalog", "sources") => batch(
            &[
                ("name", T),
                ("type", T),
                ("connection", T),
                ("publication", T),
                ("tables", T),
                ("state", T),
                ("snapshot_rows", I),
                ("snapshot_total", I),
                ("lsn_received", T),
                ("lsn_committed", T),
                ("lag_bytes", I),
                ("lag_ms", I),
                ("rows_ingested", I),
            ],
            sources
                .iter()
                .map(|(name, info)| {
                    let tables: Vec<&str> = info.tables().into_iter().map(|(_, n)| n).collect();
                    let s = info.status.lock().expect("status lock").clone();
                    let (kind, connection, publication) = info.describe();
                    // A load generator has no LSNs: its position is its
                    // event count (rows_ingested).
                    let postgres = matches!(info.kind, crate::ingest::SourceKind::Postgres { .. });
                    let lsn = |l: u64| {
                        if postgres {
                            text(format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff))
                        } else {
                            null_text()
                        }
                    };
                    let optional = |v: &str| if v.is_empty() { null_text() } else { text(v) };
                    vec![
                        text(name),
                        text(kind),
                        optional(connection),
                        optional(publication),
                        text(tables.join(", ")),
                        text(&s.state),
                        int(s.snapshot_rows as i64),
                        int(s.snapshot_total as i64),
                        lsn(s.lsn_received),
                        lsn(s.lsn_committed),
                        int(s.lag_bytes() as i64),
                        int(s.lag_ms()),
                        int(s.rows as i64),
                    ]
                })
                .collect(),
        ),
        ("weir_catalog", "arrangement_sizes") => batch(
            &[
                ("relation", T),
                ("relation_id", I),
                ("operator", T),
                ("worker", I),
                ("batches", I),
                ("records", I),
                ("size_bytes", I),
                ("capacity_bytes", I),
            ],
            arrangement_sizes
                .map(|b| arrangement_rows(b, entries))
                .unwrap_or_default(),
        ),
        ("weir_catalog", "dependencies") => batch(
            &[("relation", T), ("depends_on", T)],
            entries
                .iter()
                .flat_map(|e| e.depends_on.iter().map(move |d| vec![text(&e.name), text(d)]))
                .collect(),
        ),
        _ => return None,
    };
    Some(b)
}
