//! The catalog: every table, view and materialized view, by name.
//!
//! The planner reads it through [`CatalogReader`]; DDL changes it under the
//! coordinator's DDL lock. It records what each relation depends on, so a
//! drop that would orphan a view is refused without `CASCADE`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use weir_sql::{CatalogReader, GlobalId, Plan, RelationDesc, RelationKind};

/// A column of a table.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: String,
    pub nullable: bool,
    pub max_length: Option<u64>,
}

/// A catalog entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: GlobalId,
    pub name: String,
    pub kind: RelationKind,
    pub schema: SchemaRef,
    pub columns: Vec<ColumnDef>,
    /// Column indices of the primary key (tables only).
    pub primary_key: Vec<usize>,
    /// Column indices of each `UNIQUE` constraint (tables only).
    pub unique: Vec<Vec<usize>>,
    /// The `CREATE` statement, as the user wrote it.
    pub create_sql: String,
    /// The bound definition of a view.
    pub view_plan: Option<LogicalPlan>,
    /// The dataflow plan of a materialized view.
    pub plan: Option<Arc<Plan>>,
    /// Names of the relations this one reads directly.
    pub depends_on: Vec<String>,
    /// The source that feeds this table; statements cannot write it.
    pub source: Option<String>,
    /// The source only ever inserts into this table (load generators, a
    /// file source's rows). Not recorded: a restarted server treats the
    /// table as one that may change.
    pub append_only: bool,
    /// The indexes `CREATE INDEX` made on this relation, oldest first.
    pub indexes: Vec<Index>,
}

/// An index made by `CREATE INDEX`, kept with the relation it indexes and
/// dropped with it.
///
/// Weir answers no query differently for it: reads of a table already
/// filter on the workers and views keep their own arrangements. A `UNIQUE`
/// index is a uniqueness constraint like `UNIQUE (...)`, checked on every
/// write (`23505`). Either kind is a catalog object psql lists (`\di`,
/// `\d table`), so schemas written for PostgreSQL load unchanged.
#[derive(Debug, Clone)]
pub struct Index {
    pub id: GlobalId,
    pub name: String,
    /// The indexed columns, in index order.
    pub columns: Vec<IndexColumn>,
    pub unique: bool,
    /// The access method: `btree` or `hash`.
    pub method: &'static str,
    /// The `CREATE INDEX` statement, as the user wrote it.
    pub create_sql: String,
}

/// A column of an [`Index`] and its order.
#[derive(Debug, Clone, Copy)]
pub struct IndexColumn {
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

impl Index {
    /// PostgreSQL's `pg_get_indexdef`: `CREATE INDEX i ON public.t USING
    /// btree (a, b DESC)`, naming a column's order only where it is not
    /// the default.
    pub fn definition(&self, table: &Entry) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = table.columns[c.column].name.clone();
                if c.descending {
                    s.push_str(" DESC");
                }
                // NULLs come last ascending and first descending, unless said.
                if c.nulls_first != c.descending {
                    s.push_str(if c.nulls_first {
                        " NULLS FIRST"
                    } else {
                        " NULLS LAST"
                    });
                }
                s
            })
            .collect();
        format!(
            "CREATE {}INDEX {} ON public.{} USING {} ({})",
            if self.unique { "UNIQUE " } else { "" },
            self.name,
            table.name,
            self.method,
            columns.join(", ")
        )
    }
}

impl Entry {
    /// The uniqueness constraints a write must keep: the primary key (if
    /// any) first, then each `UNIQUE`, with PostgreSQL's constraint names.
    pub fn constraints(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        if !self.primary_key.is_empty() {
            out.push((format!("{}_pkey", self.name), self.primary_key.clone()));
        }
        for cols in &self.unique {
            let names: Vec<&str> = cols.iter().map(|i| self.columns[*i].name.as_str()).collect();
            out.push((format!("{}_{}_key", self.name, names.join("_")), cols.clone()));
        }
        for index in self.indexes.iter().filter(|i| i.unique) {
            out.push((
                index.name.clone(),
                index.columns.iter().map(|c| c.column).collect(),
            ));
        }
        out
    }

    /// The durable catalog items of this relation: its own and its
    /// indexes', dropped together.
    pub fn item_ids(&self) -> impl Iterator<Item = GlobalId> + '_ {
        std::iter::once(self.id).chain(self.indexes.iter().map(|i| i.id))
    }

    /// The indexes PostgreSQL keeps behind the primary key and each
    /// `UNIQUE` constraint (named as the constraint, ascending btrees),
    /// each with its position in [`Entry::constraints`]. They have no
    /// catalog item of their own: their `id` is the table's.
    pub fn constraint_indexes(&self) -> Vec<(usize, Index)> {
        self.constraints()
            .into_iter()
            .enumerate()
            .filter(|(_, (name, _))| self.index(name).is_none())
            .map(|(c, (name, columns))| {
                let columns = columns
                    .into_iter()
                    .map(|column| IndexColumn {
                        column,
                        descending: false,
                        nulls_first: false,
                    })
                    .collect();
                let index = Index {
                    id: self.id,
                    name,
                    columns,
                    unique: true,
                    method: "btree",
                    create_sql: String::new(),
                };
                (c, index)
            })
            .collect()
    }

    /// The index named `name` on this relation.
    pub fn index(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }

    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }
}

pub fn kind_name(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Table => "table",
        RelationKind::View => "view",
        RelationKind::MaterializedView => "materialized view",
    }
}

/// A catalog object that is not a relation: a secret or a connection.
#[derive(Debug, Clone)]
pub struct Object {
    pub id: GlobalId,
    pub name: String,
    pub kind: weir_sql::source_sql::ObjectKind,
    /// A secret's value; never shown.
    pub secret: Option<String>,
    /// A connection's options (secrets by name).
    pub options: Vec<(String, weir_sql::source_sql::OptionValue)>,
}

#[derive(Debug, Default)]
struct State {
    next_id: GlobalId,
    entries: BTreeMap<String, Entry>,
    objects: BTreeMap<String, Object>,
    /// Earlier versions of source tables that gained columns upstream, by
    /// id: views created before still read them, so they stay fed, but no
    /// name reaches them any more.
    retired: BTreeMap<GlobalId, Entry>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
    /// Sources by name, with their live status and ingestion tasks.
    sources: std::sync::Mutex<BTreeMap<String, crate::ingest::Source>>,
    /// The workers' arrangement sizes as last measured, for
    /// `weir_catalog.arrangement_sizes` (measured afresh before each
    /// statement that reads it).
    arrangement_sizes: std::sync::Mutex<Option<arrow::array::RecordBatch>>,
    /// Bumped by every change to the catalog: a plan bound at one
    /// generation is bound right while it lasts (see [`Catalog::generation`]).
    generation: std::sync::atomic::AtomicU64,
}

impl Catalog {
    /// The catalog's state for changing, counted as a change.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        let state = self.state.write().expect("catalog lock");
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        state
    }

    /// A number that differs after any change to the catalog: a prepared
    /// statement's plan, bound at one generation, is rebound at another.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn allocate_id(&self) -> GlobalId {
        // Not a change to what names mean.
        let mut s = self.state.write().expect("catalog lock");
        s.next_id += 1;
        s.next_id
    }

    /// The id the next [`Catalog::allocate_id`] hands out.
    pub fn next_id(&self) -> GlobalId {
        self.state.read().expect("catalog lock").next_id + 1
    }

    /// Make [`Catalog::allocate_id`] hand out `id` next (restoring the
    /// ids a durable catalog recorded).
    pub fn set_next_id(&self, id: GlobalId) {
        self.write().next_id = id.saturating_sub(1);
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.state
            .read()
            .expect("catalog lock")
            .entries
            .get(name)
            .cloned()
    }

    /// A source's table restored before it: id, name and schema.
    pub(crate) fn source_table(&self, name: &str) -> Result<(GlobalId, String, SchemaRef), String> {
        let entry = self.get(name).ok_or_else(|| format!("table {name} is missing"))?;
        Ok((entry.id, entry.name, entry.schema))
    }

    pub fn insert(&self, entry: Entry) {
        self.write().entries.insert(entry.name.clone(), entry);
    }

    pub fn remove(&self, name: &str) -> Option<Entry> {
        self.write().entries.remove(name)
    }

    /// Remove `entry`, by name or as a retired version.
    pub fn remove_entry(&self, entry: &Entry) {
        let mut s = self.write();
        if s.retired.remove(&entry.id).is_none()
            && s.entries.get(&entry.name).is_some_and(|e| e.id == entry.id)
        {
            s.entries.remove(&entry.name);
        }
    }

    /// Make table `name` a retired version (its name is about to name the
    /// table's next version), and return its indexes: they pass to the
    /// next version, whose columns start with the same ones.
    pub fn retire(&self, name: &str) -> Vec<Index> {
        let mut s = self.write();
        let Some(mut entry) = s.entries.remove(name) else {
            return Vec::new();
        };
        let indexes = std::mem::take(&mut entry.indexes);
        s.retired.insert(entry.id, entry);
        indexes
    }

    /// Retired table version `id`.
    pub fn retired(&self, id: GlobalId) -> Option<Entry> {
        self.state.read().expect("catalog lock").retired.get(&id).cloned()
    }

    /// Every table holding rows: the named ones and the retired versions.
    pub fn all_tables(&self) -> Vec<Entry> {
        let s = self.state.read().expect("catalog lock");
        s.entries
            .values()
            .filter(|e| e.kind == RelationKind::Table)
            .chain(s.retired.values())
            .cloned()
            .collect()
    }

    /// The sources, locked (briefly: nothing awaits under this lock).
    pub fn set_arrangement_sizes(&self, sizes: arrow::array::RecordBatch) {
        *self.arrangement_sizes.lock().expect("sizes lock") = Some(sizes);
    }

    pub fn sources(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, crate::ingest::Source>> {
        self.sources.lock().expect("sources lock")
    }

    pub fn object(&self, name: &str) -> Option<Object> {
        self.state
            .read()
            .expect("catalog lock")
            .objects
            .get(name)
            .cloned()
    }

    pub fn insert_object(&self, object: Object) {
        self.write().objects.insert(object.name.clone(), object);
    }

    pub fn remove_object(&self, name: &str) -> Option<Object> {
        self.write().objects.remove(name)
    }

    /// Secrets and connections, by name.
    pub fn objects(&self) -> Vec<Object> {
        self.state
            .read()
            .expect("catalog lock")
            .objects
            .values()
            .cloned()
            .collect()
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.state
            .read()
            .expect("catalog lock")
            .entries
            .values()
            .cloned()
            .collect()
    }

    /// The relation holding the index named `name`.
    pub fn index_owner(&self, name: &str) -> Option<Entry> {
        self.state
            .read()
            .expect("catalog lock")
            .entries
            .values()
            .find(|e| e.index(name).is_some())
            .cloned()
    }

    /// Whether a relation or an index is named `name` (they share
    /// PostgreSQL's namespace), counting the index behind each primary key
    /// and `UNIQUE` constraint, which is named as the constraint.
    pub fn name_taken(&self, name: &str) -> bool {
        let s = self.state.read().expect("catalog lock");
        s.entries.contains_key(name)
            || s.entries
                .values()
                .any(|e| e.constraints().iter().any(|(c, _)| c == name) || e.index(name).is_some())
    }

    /// Names of the relations that read `name` directly.
    pub fn dependents(&self, name: &str) -> Vec<Entry> {
        self.state
            .read()
            .expect("catalog lock")
            .entries
            .values()
            .filter(|e| e.depends_on.iter().any(|d| d == name))
            .cloned()
            .collect()
    }

    /// `name` and everything that depends on it, dependents first.
    pub fn dependents_closure(&self, name: &str) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        let mut visit = vec![name.to_string()];
        while let Some(n) = visit.pop() {
            for d in self.dependents(&n) {
                if !out.iter().any(|e| e.name == d.name) {
                    visit.push(d.name.clone());
                    out.push(d);
                }
            }
        }
        // Drop the deepest dependents first.
        out.reverse();
        out
    }
}

impl CatalogReader for Catalog {
    fn relation(&self, name: &str) -> Option<RelationDesc> {
        self.get(name).map(|e| RelationDesc {
            id: e.id,
            name: e.name.clone(),
            kind: e.kind,
            schema: e.schema.clone(),
            view_plan: e.view_plan.clone(),
            definition: e.create_sql.clone(),
        })
    }

    fn system_table(&self, schema: &str, name: &str) -> Option<arrow::array::RecordBatch> {
        let sizes = self.arrangement_sizes.lock().expect("sizes lock").clone();
        crate::system::table(schema, name, &self.entries(), &self.sources(), sizes.as_ref())
    }

    fn system_table_names(&self, schema: &str) -> Vec<String> {
        crate::system::table_names(schema)
    }

    fn relation_names(&self) -> Vec<String> {
        self.state
            .read()
            .expect("catalog lock")
            .entries
            .keys()
            .cloned()
            .collect()
    }
}

/// An Arrow schema whose fields are all nullable (NOT NULL is enforced by
/// the coordinator on write, with PostgreSQL's error).
pub fn nullable_schema(fields: impl IntoIterator<Item = (String, arrow::datatypes::DataType)>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ))
}
