//! Executing statements: DDL against the catalog, writes through the
//! controller, reads as peeks plus DataFusion, subscriptions.
//!
//! This is the only place that decides what a statement does. It reaches the
//! workers solely through the [`Controller`] (commands as data) and never
//! calls into the engine.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ParamValues, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{DmlStatement, LogicalPlan, LogicalPlanBuilder, TableScan, WriteOp, col};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{self, ObjectType};
use tokio::sync::Mutex;
use weir_connectors::copy::{CopyFormat, decode};
use weir_protocol::TableUpdate;
use weir_sql::planner::relation_name;
use weir_sql::statement::{CopyFrom, ParsedStatement, Statement, SubscribeTarget};
use weir_sql::{GlobalId, Plan, PlanNode, Planner, RelationKind, SqlError};

use crate::catalog::{Catalog, ColumnDef, Entry, kind_name, nullable_schema};
use crate::controller::{Controller, PeekTarget, SubscribeMessage};
use crate::durable::{Durable, PendingWrite};
use crate::error::AdapterError;
use crate::keys::{KeyIndexes, key_rows};

/// What a statement produced.
pub enum ExecuteResult {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    Command {
        tag: String,
    },
    Subscribe(Subscription),
    CopyIn(CopyTarget),
    Begin,
    Commit,
    Rollback,
}

/// A running subscription; dropping it stops the dataflow.
pub struct Subscription {
    pub id: u64,
    /// Stream as `COPY ... TO STDOUT` data rather than as rows.
    pub copy_out: bool,
    pub as_of: u64,
    pub schema: SchemaRef,
    pub messages: tokio::sync::mpsc::UnboundedReceiver<SubscribeMessage>,
    pub workers: usize,
    controller: Arc<Controller>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.controller.unsubscribe(self.id);
    }
}

/// Where a `COPY FROM STDIN` goes.
#[derive(Debug, Clone)]
pub struct CopyTarget {
    pub table: String,
    pub columns: Vec<usize>,
    pub format: CopyFormat,
}

pub struct Coordinator {
    pub catalog: Arc<Catalog>,
    pub planner: Planner,
    controller: Arc<Controller>,
    /// Serializes DDL.
    pub(crate) ddl: Mutex<()>,
    /// Serializes writes; holds, per table and uniqueness constraint (in
    /// [`Entry::constraints`] order), the keys present.
    pub(crate) writes: Mutex<KeyIndexes>,
    /// Where changes become durable; unset while the durable state is
    /// being replayed at startup.
    durable: OnceLock<Durable>,
    /// The task recording each materialized view's output in its shard.
    recorders: std::sync::Mutex<HashMap<GlobalId, tokio::task::JoinHandle<()>>>,
    /// Where PostgreSQL sources ask for a table's next version, and (until
    /// [`Coordinator::serve_widening`] takes it) where those requests wait.
    pub(crate) widener: crate::ingest::Widener,
    widen_requests: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::ingest::Widen>>>,
}

/// A statement's plan as bound for Describe, and the catalog generation
/// it was bound at.
#[derive(Debug, Clone)]
pub struct Bound {
    plan: LogicalPlan,
    generation: u64,
}

/// What Describe tells of a statement.
#[derive(Debug, Default)]
pub struct Described {
    /// The types the planner expects for `$1..$n`.
    pub params: Vec<Option<DataType>>,
    /// The rows' schema, for a statement that returns rows.
    pub schema: Option<SchemaRef>,
    /// The plan, where executing the statement may run it again.
    pub bound: Option<Bound>,
}

impl Described {
    fn schema(schema: SchemaRef) -> Self {
        Described {
            schema: Some(schema),
            ..Default::default()
        }
    }
}

/// What replaying the durable state leaves to start once writes are
/// durable again: view recorders and sources.
pub struct Replayed {
    pub outputs: HashMap<GlobalId, Option<weir_persist::Updates>>,
    /// Each source's name, resume position and tables' rows as `COPY` lines.
    pub sources: Vec<SourceStart>,
}

/// A source to start: its name, resume position, and its tables' rows as
/// `COPY` text lines.
pub type SourceStart = (String, Option<u64>, HashMap<GlobalId, Vec<String>>);

type Result<T> = std::result::Result<T, AdapterError>;

/// A statement's completion with command tag `tag`.
pub(crate) fn command(tag: &str) -> ExecuteResult {
    ExecuteResult::Command { tag: tag.into() }
}

pub(crate) fn unsupported(what: impl Into<String>) -> AdapterError {
    AdapterError::Sql(SqlError::Unsupported(what.into()))
}

pub(crate) fn object_name(name: &ast::ObjectName) -> String {
    let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
    match last.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => last.to_ascii_lowercase(),
    }
}

pub(crate) fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

impl Coordinator {
    pub fn new(controller: Arc<Controller>) -> Self {
        let catalog = Arc::new(Catalog::default());
        let planner = Planner::new(catalog.clone());
        let (widener, widen_requests) = tokio::sync::mpsc::unbounded_channel();
        Coordinator {
            widener,
            widen_requests: std::sync::Mutex::new(Some(widen_requests)),
            catalog,
            planner,
            controller,
            ddl: Mutex::new(()),
            writes: Mutex::new(KeyIndexes::default()),
            durable: OnceLock::new(),
            recorders: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Replay a durable state: recreate every catalog item with its id, in
    /// creation order, then load every table's rows at one time no earlier
    /// than the state's upper. Nothing is written back while replaying.
    /// Returns what the materialized views' output shards hold, for
    /// [`Coordinator::record_views`].
    pub async fn restore(&self, mut restored: weir_persist::Restored) -> Result<Replayed> {
        let mut sources = Vec::new();
        for item in &restored.catalog {
            self.catalog.set_next_id(item.id);
            let failed = |e: String| {
                AdapterError::StateStore(format!(
                    "cannot restore catalog item {} ({}): {e}",
                    item.id, item.sql
                ))
            };
            let statements = weir_sql::statement::parse(&item.sql).map_err(|e| failed(e.to_string()))?;
            let [statement] = statements.as_slice() else {
                return Err(failed("not exactly one statement".into()));
            };
            // A source is rebuilt from its recorded detail once its tables
            // are back, without asking the upstream anything.
            if let Statement::Source(
                weir_sql::source_sql::SourceStatement::CreateSource { name, .. }
                | weir_sql::source_sql::SourceStatement::CreateGeneratorSource { name, .. }
                | weir_sql::source_sql::SourceStatement::CreateFileSource { name, .. },
            ) = &statement.statement
            {
                sources.push((
                    item.id,
                    name.clone(),
                    item.sql.clone(),
                    item.detail.clone().unwrap_or_default(),
                ));
                continue;
            }
            // A source table's next version (it gained columns upstream)
            // takes over the name and the indexes; views replayed so far
            // keep reading the version they were created on.
            let replaced = match replaced_table(item.detail.as_deref()) {
                Some(retired) => {
                    let Some(name) = self
                        .catalog
                        .entries()
                        .into_iter()
                        .find(|e| e.id == retired)
                        .map(|e| e.name)
                    else {
                        return Err(failed(format!(
                            "the table version {retired} it replaces is missing"
                        )));
                    };
                    let indexes = self.catalog.retire(&name);
                    Some((name, indexes))
                }
                None => None,
            };
            self.execute(statement, &[])
                .await
                .map_err(|e| failed(e.to_string()))?;
            if let Some((name, indexes)) = replaced
                && let Some(mut entry) = self.catalog.get(&name)
            {
                entry.indexes = indexes;
                self.catalog.insert(entry);
            }
        }
        let mut starts = Vec::new();
        for (id, name, sql, detail) in sources {
            let source = crate::sources::source_from_detail(id, &name, &sql, &detail, &self.catalog)
                .map_err(|e| AdapterError::StateStore(format!("cannot restore source {name}: {e}")))?;
            // A PostgreSQL source keeps its tables' current rows (to
            // complete key-only updates), a file source its progress; a
            // generator needs none.
            let current: HashMap<GlobalId, Vec<String>> = match &source.kind {
                crate::ingest::SourceKind::Postgres { feeds, .. } => {
                    feeds.iter().map(|f| (f.table, Vec::new())).collect()
                }
                crate::ingest::SourceKind::Generator { .. } => HashMap::new(),
                crate::ingest::SourceKind::Files { progress, .. } => {
                    HashMap::from([(progress.0, Vec::new())])
                }
            };
            // Its tables were replayed as plain tables: they are fed.
            for (_, table) in source.tables() {
                if let Some(mut entry) = self.catalog.get(table) {
                    entry.source = Some(name.clone());
                    self.catalog.insert(entry);
                }
            }
            starts.push((name.clone(), restored.positions.get(&id).copied(), current));
            self.register_source(source);
        }
        let mut writes = self.writes.lock().await;
        let mut updates = Vec::new();
        for entry in self.catalog.all_tables() {
            // Replayed as plain tables, a source's tables are fed from
            // upstream and keep no key indexes.
            if entry.source.is_some() {
                writes.remove(entry.id);
            }
            let Some(Some(rows)) = restored.shards.remove(&entry.id) else {
                continue;
            };
            if rows.batch.schema().fields() != entry.schema.fields() {
                return Err(AdapterError::StateStore(format!(
                    "the stored rows of table {} (shard {}) have columns {:?}, the table has {:?}",
                    entry.name,
                    entry.id,
                    rows.batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>(),
                    entry.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
                )));
            }
            // A row stored with diff n is n equal rows.
            let indices: Vec<u32> = rows
                .diffs
                .iter()
                .enumerate()
                .flat_map(|(i, d)| std::iter::repeat_n(i as u32, *d as usize))
                .collect();
            let columns = rows
                .batch
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c, &arrow::array::UInt32Array::from(indices.clone()), None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| AdapterError::Internal(e.to_string()))?;
            let batch = RecordBatch::try_new(entry.schema.clone(), columns)
                .map_err(|e| AdapterError::Internal(e.to_string()))?;
            // A source's ingestion keeps its tables' rows as COPY lines.
            for (_, _, current) in starts.iter_mut() {
                if let Some(lines) = current.get_mut(&entry.id) {
                    lines.extend(crate::server::text_rows(&batch));
                }
            }
            updates.extend(self.apply_write(&entry, &mut writes, Some(batch), None)?);
        }
        let time = self.controller.next_write_time(restored.upper);
        self.controller.write_at(time, updates);
        self.catalog
            .set_next_id(restored.next_id.max(self.catalog.next_id()));
        Ok(Replayed {
            outputs: restored.shards.into_iter().collect(),
            sources: starts,
        })
    }

    /// Answer the sources' requests for new table versions (see
    /// [`crate::ingest::Widen`]) for as long as the coordinator lives.
    pub fn serve_widening(self: &Arc<Self>) {
        let Some(mut requests) = self.widen_requests.lock().expect("widen lock").take() else {
            return;
        };
        let coord = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let Some(coord) = coord.upgrade() else { return };
                let crate::ingest::Widen {
                    source,
                    feed,
                    upstream,
                    rows,
                    done,
                } = request;
                let result = coord
                    .add_table_version(&source, feed, upstream, rows)
                    .await
                    .map_err(|e| e.to_string());
                let _ = done.send(result);
            }
        });
    }

    /// The committer, once replay is over.
    pub(crate) fn durable(&self) -> Option<Durable> {
        self.durable.get().cloned()
    }

    /// Remove `doomed` relations: catalog, workers, recorders, key indexes.
    pub(crate) async fn remove_entries(&self, doomed: Vec<Entry>) {
        for e in doomed {
            self.stop_recording(e.id);
            self.catalog.remove_entry(&e);
            if e.kind != RelationKind::View {
                self.controller.send(weir_protocol::Command::Drop { id: e.id });
            }
            self.writes.lock().await.remove(e.id);
        }
    }

    /// Start recording every materialized view's output, reconciled with
    /// what its shard holds (`stored`, from [`Coordinator::restore`]).
    pub fn record_views(&self, mut stored: HashMap<GlobalId, Option<weir_persist::Updates>>) -> Result<()> {
        for entry in self.catalog.entries() {
            if entry.kind == RelationKind::MaterializedView {
                self.record(&entry, stored.remove(&entry.id).flatten())?;
            }
        }
        Ok(())
    }

    /// Start recording the output of the materialized view `entry`.
    fn record(&self, entry: &Entry, stored: Option<weir_persist::Updates>) -> Result<()> {
        let Some(durable) = self.durable.get() else {
            return Ok(());
        };
        let task = crate::record::start(
            self.controller.clone(),
            durable.clone(),
            entry.id,
            entry.name.clone(),
            entry.schema.clone(),
            stored,
        )?;
        if let Some(old) = self
            .recorders
            .lock()
            .expect("recorders lock")
            .insert(entry.id, task)
        {
            old.abort();
        }
        Ok(())
    }

    /// Stop recording a dropped view's output.
    fn stop_recording(&self, id: GlobalId) {
        if let Some(task) = self.recorders.lock().expect("recorders lock").remove(&id) {
            task.abort();
        }
    }

    /// From now on, make every change durable through `durable`.
    pub fn set_durable(&self, durable: Durable) {
        let _ = self.durable.set(durable);
    }

    /// Whether the durable catalog is being replayed (startup).
    pub(crate) fn restoring(&self) -> bool {
        self.durable.get().is_none()
    }

    /// Make catalog changes durable before they take effect.
    pub(crate) async fn persist_catalog(&self, ops: Vec<weir_persist::CatalogOp>) -> Result<()> {
        match self.durable.get() {
            Some(d) => d.catalog(ops, self.catalog.next_id()).await,
            None => Ok(()),
        }
    }

    /// Enqueue `updates` to become durable and visible; call under the
    /// write lock (so writes keep its order), await after releasing it (so
    /// concurrent writes share a commit).
    fn commit(&self, updates: Vec<TableUpdate>) -> Option<PendingWrite> {
        if updates.is_empty() {
            return None;
        }
        match self.durable.get() {
            Some(d) => Some(d.write(updates)),
            None => {
                self.controller.write(updates);
                None
            }
        }
    }

    /// Wait until every enqueued write is visible to reads.
    pub(crate) async fn barrier(&self) -> Result<()> {
        match self.durable.get() {
            Some(d) => d.barrier().await,
            None => Ok(()),
        }
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The catalog entry named `name`, or 42P01.
    pub(crate) fn entry(&self, name: &str) -> Result<Entry> {
        self.catalog.get(name).ok_or_else(|| {
            SqlError::UndefinedTable {
                name: name.to_string(),
                position: None,
            }
            .into()
        })
    }

    /// Execute one statement with bound parameter values.
    pub async fn execute(&self, stmt: &ParsedStatement, params: &[ScalarValue]) -> Result<ExecuteResult> {
        self.execute_prepared(stmt, params, None).await
    }

    /// [`Coordinator::execute`] of a prepared statement, with the plan
    /// [`Coordinator::describe`] bound for it, which is run again while
    /// the catalog is as it was (rather than binding the statement anew
    /// for every execution, and twice for the first).
    pub async fn execute_prepared(
        &self,
        stmt: &ParsedStatement,
        params: &[ScalarValue],
        bound: Option<&Bound>,
    ) -> Result<ExecuteResult> {
        let sql = stmt.sql.as_str();
        let bound = bound.filter(|b| b.generation == self.catalog.generation());
        let result = match &stmt.statement {
            Statement::Sql(ast) => self.execute_sql(ast, sql, params, bound).await,
            Statement::Subscribe { target, copy_out } => self.subscribe(target, *copy_out).await,
            Statement::Show(show) => crate::show::show(self, show),
            Statement::Copy(copy) => self.copy_target(copy),
            Statement::Transaction(op) => Ok(match op {
                weir_sql::statement::TransactionOp::Begin => ExecuteResult::Begin,
                weir_sql::statement::TransactionOp::Commit => ExecuteResult::Commit,
                weir_sql::statement::TransactionOp::Rollback => ExecuteResult::Rollback,
            }),
            Statement::SetVariable { tag } => Ok(ExecuteResult::Command {
                tag: (*tag).to_string(),
            }),
            Statement::Source(s) => self.source_statement(s, sql).await,
        };
        result.map_err(|e| match e {
            AdapterError::Sql(e) => AdapterError::Sql(e.offset(stmt.offset)),
            e => e,
        })
    }

    async fn execute_sql(
        &self,
        ast: &ast::Statement,
        sql: &str,
        params: &[ScalarValue],
        bound: Option<&Bound>,
    ) -> Result<ExecuteResult> {
        match ast {
            ast::Statement::Query(q) => {
                // Arrangement sizes are measured by the workers when read,
                // not kept up to date between reads.
                if crate::system::reads_arrangement_sizes(ast) {
                    let sizes = self.controller.arrangement_sizes().await?;
                    self.catalog.set_arrangement_sizes(sizes);
                }
                let answer = match self.bind_or_reuse(ast, sql, params, bound).await {
                    Ok(plan) => self.run(plan).await,
                    Err(e) => Err(e),
                };
                let (schema, batches) = match answer {
                    Ok(answer) => answer,
                    Err(_) if crate::system::reads_empty_relation(q) => {
                        let names = weir_sql::names::output_names(q).unwrap_or_default();
                        let fields: Vec<arrow::datatypes::Field> = names
                            .iter()
                            .map(|n| arrow::datatypes::Field::new(n, arrow::datatypes::DataType::Utf8, true))
                            .collect();
                        (Arc::new(Schema::new(fields)), Vec::new())
                    }
                    Err(e) => return Err(e),
                };
                let schema = renamed(&schema, &pg_names(q, &schema));
                let batches = batches
                    .into_iter()
                    .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| AdapterError::Internal(e.to_string()))?;
                Ok(ExecuteResult::Rows { schema, batches })
            }
            ast::Statement::CreateTable(ct) => self.create_table(ct, sql).await,
            ast::Statement::CreateView(cv) => self.create_view(cv, sql).await,
            ast::Statement::CreateIndex(ci) => self.create_index(ci, sql).await,
            ast::Statement::Drop {
                object_type: ObjectType::Index,
                if_exists,
                names,
                ..
            } => self.drop_indexes(*if_exists, names).await,
            ast::Statement::Drop {
                object_type,
                if_exists,
                names,
                cascade,
                ..
            } => self.drop(*object_type, *if_exists, names, *cascade).await,
            ast::Statement::Insert(_) | ast::Statement::Update(_) | ast::Statement::Delete(_) => {
                let plan = self.bind_or_reuse(ast, sql, params, bound).await?;
                self.write_dml(plan).await
            }
            ast::Statement::Explain { statement, .. } => self.explain(statement, sql).await,
            other => Err(unsupported(format!(
                "statement \"{}\"",
                first_words(&other.to_string())
            ))),
        }
    }

    /// `INSERT INTO t VALUES (...)` with fewer values than columns fills the
    /// first columns, as in PostgreSQL: name them so DataFusion agrees.
    fn fill_insert_columns<'a>(&self, stmt: &'a ast::Statement) -> std::borrow::Cow<'a, ast::Statement> {
        if !matches!(stmt, ast::Statement::Insert(_)) {
            return std::borrow::Cow::Borrowed(stmt);
        }
        let mut stmt = stmt.clone();
        if let ast::Statement::Insert(insert) = &mut stmt
            && let (true, ast::TableObject::TableName(name), Some(source)) =
                (insert.columns.is_empty(), &insert.table, &insert.source)
            && let (ast::SetExpr::Values(values), Some(entry)) =
                (source.body.as_ref(), self.catalog.get(&object_name(name)))
        {
            let width = values.rows.iter().map(|r| r.len()).max().unwrap_or(0);
            if width < entry.columns.len() {
                insert.columns = entry.columns[..width]
                    .iter()
                    .map(|c| ast::ObjectName::from(vec![ast::Ident::with_quote('"', c.name.clone())]))
                    .collect();
            }
        }
        std::borrow::Cow::Owned(stmt)
    }

    /// Bind `ast`, an `INSERT` naming the columns its values fill.
    async fn bind(&self, ast: &ast::Statement, sql: &str) -> Result<LogicalPlan> {
        let ast = self.fill_insert_columns(ast).into_owned();
        Ok(self.planner.bind(ast, sql).await?)
    }

    /// `bound`'s plan where there is one (bound at the catalog's current
    /// generation), else `ast` bound now; with parameter values
    /// substituted.
    async fn bind_or_reuse(
        &self,
        ast: &ast::Statement,
        sql: &str,
        params: &[ScalarValue],
        bound: Option<&Bound>,
    ) -> Result<LogicalPlan> {
        let plan = match bound {
            Some(bound) => bound.plan.clone(),
            None => self.bind(ast, sql).await?,
        };
        if params.is_empty() {
            return Ok(plan);
        }
        plan.with_param_values(ParamValues::from(params.to_vec()))
            .map_err(AdapterError::from)
    }

    /// Run a bound plan once over a consistent snapshot of what it reads.
    pub async fn run(&self, plan: LogicalPlan) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.run_restricted(plan, None).await
    }

    /// [`Self::run`], reading only the rows of `restriction.0` whose
    /// primary keys are in `restriction.1` (the plan filters on them).
    async fn run_restricted(
        &self,
        plan: LogicalPlan,
        restriction: Option<(GlobalId, Arc<Vec<Vec<u8>>>)>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        // DML input plans are shaped for their table; leave them be.
        let optimized = !matches!(plan, LogicalPlan::Dml(_));
        let plan = if optimized {
            self.planner.optimize_oneshot(&plan, "")?
        } else {
            plan
        };
        // Scans of a WITH RECURSIVE name read DataFusion's work table.
        let mut recursive: Vec<String> = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::RecursiveQuery(r) = node {
                recursive.push(r.name.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let mut names: Vec<String> = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some(n) = relation_name(&scan.table_name)
                && !names.iter().any(|x| x == n)
                && !recursive.iter().any(|x| x == n)
                // System relations are computed; only user relations are peeked.
                && self.catalog.get(n).is_some()
            {
                names.push(n.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        // The columns each relation's scans use, so that workers send only
        // those (none at all for `count(*)`). Unoptimized DML plans read
        // whole rows.
        let mut columns: HashMap<&str, Option<Vec<usize>>> = HashMap::new();
        if optimized {
            plan.apply_with_subqueries(|node| {
                if let LogicalPlan::TableScan(scan) = node
                    && let Some(n) = relation_name(&scan.table_name)
                    && let Some(i) = names.iter().position(|x| x == n)
                {
                    let used = columns
                        .entry(names[i].as_str())
                        .or_insert_with(|| Some(Vec::new()));
                    match (used.as_mut(), &scan.projection) {
                        (Some(used), Some(p)) => used.extend(p),
                        _ => *used = None,
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        let mut targets = Vec::new();
        for n in &names {
            let e = self.entry(n)?;
            let keys = restriction
                .as_ref()
                .filter(|(id, _)| *id == e.id)
                .map(|(_, keys)| keys.clone());
            let columns = columns.get(n.as_str()).cloned().flatten().map(|mut c| {
                c.sort_unstable();
                c.dedup();
                Arc::new(c)
            });
            targets.push(PeekTarget {
                id: e.id,
                schema: e.schema.clone(),
                keys,
                columns,
            });
        }
        let snapshots = self.controller.peek(&targets).await?;
        let tables: HashMap<String, Scanned> = names
            .iter()
            .zip(targets.iter().zip(snapshots))
            .map(|(n, (target, batch))| {
                let table = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?);
                Ok((n.clone(), (table, target.columns.clone())))
            })
            .collect::<Result<_>>()?;
        if optimized {
            return self.execute_over(plan, tables).await;
        }
        let plan = scanning(plan, &tables)?;
        let ctx = SessionContext::new_with_state(self.planner.state().clone());
        let df = ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }

    /// Run optimized `plan` with its scans of `tables` reading those rows.
    async fn execute_over(
        &self,
        plan: LogicalPlan,
        tables: HashMap<String, Scanned>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let plan = scanning(plan, &tables)?;
        // Planned physically as it is: executing the logical plan would
        // run the optimizer over it a second time (for a 1,000-key UPDATE
        // as long as the first pass).
        let state = self.planner.state();
        let physical = state.query_planner().create_physical_plan(&plan, state).await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
        Ok((schema, batches))
    }

    async fn create_table(&self, ct: &ast::CreateTable, sql: &str) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        let name = object_name(&ct.name);
        if self.catalog.name_taken(&name) {
            if ct.if_not_exists {
                return Ok(ExecuteResult::Command {
                    tag: "CREATE TABLE".into(),
                });
            }
            return Err(SqlError::DuplicateRelation(name).into());
        }
        let entry = self.table_entry(ct, sql, None)?;
        self.persist_catalog(vec![table_item(&entry)]).await?;
        self.install_table(entry).await;
        Ok(ExecuteResult::Command {
            tag: "CREATE TABLE".into(),
        })
    }

    /// The catalog entry `CREATE TABLE` describes, with a fresh id; a table
    /// fed by `source` cannot be written by statements.
    pub(crate) fn table_entry(
        &self,
        ct: &ast::CreateTable,
        sql: &str,
        source: Option<String>,
    ) -> Result<Entry> {
        let name = object_name(&ct.name);
        if ct.query.is_some() {
            return Err(unsupported("CREATE TABLE ... AS"));
        }
        let mut columns = Vec::new();
        let mut types = Vec::new();
        let mut primary_key: Vec<usize> = Vec::new();
        let mut unique: Vec<Vec<usize>> = Vec::new();
        for (i, c) in ct.columns.iter().enumerate() {
            let cname = ident(&c.name);
            if columns.iter().any(|x: &ColumnDef| x.name == cname) {
                return Err(SqlError::DuplicateColumn(cname).into());
            }
            let ty = weir_sql::types::column_type(&c.data_type)?;
            let mut nullable = true;
            for opt in &c.options {
                match &opt.option {
                    ast::ColumnOption::Null => {}
                    ast::ColumnOption::NotNull => nullable = false,
                    ast::ColumnOption::PrimaryKey(_) => {
                        if !primary_key.is_empty() {
                            return Err(SqlError::InvalidTableDefinition(name).into());
                        }
                        primary_key.push(i);
                        nullable = false;
                    }
                    ast::ColumnOption::Unique(_) => unique.push(vec![i]),
                    other => return Err(unsupported(format!("column option {other}"))),
                }
            }
            types.push((cname.clone(), ty.data_type.clone()));
            columns.push(ColumnDef {
                name: cname,
                sql_type: ty.sql_name,
                nullable,
                max_length: ty.max_length,
            });
        }
        for constraint in &ct.constraints {
            match constraint {
                ast::TableConstraint::PrimaryKey(pk) => {
                    if !primary_key.is_empty() {
                        return Err(SqlError::InvalidTableDefinition(name).into());
                    }
                    for ic in &pk.columns {
                        let cname = match &ic.column.expr {
                            ast::Expr::Identifier(id) => ident(id),
                            other => {
                                return Err(unsupported(format!("primary key expression {other}")));
                            }
                        };
                        let idx = columns.iter().position(|c| c.name == cname).ok_or_else(|| {
                            AdapterError::UndefinedColumn {
                                table: name.clone(),
                                column: cname.clone(),
                            }
                        })?;
                        columns[idx].nullable = false;
                        primary_key.push(idx);
                    }
                }
                ast::TableConstraint::Unique(u) => {
                    let mut cols = Vec::new();
                    for ic in &u.columns {
                        let cname = match &ic.column.expr {
                            ast::Expr::Identifier(id) => ident(id),
                            other => return Err(unsupported(format!("unique expression {other}"))),
                        };
                        let idx = columns.iter().position(|c| c.name == cname).ok_or_else(|| {
                            AdapterError::UndefinedColumn {
                                table: name.clone(),
                                column: cname.clone(),
                            }
                        })?;
                        cols.push(idx);
                    }
                    unique.push(cols);
                }
                other => return Err(unsupported(format!("table constraint {other}"))),
            }
        }
        let schema = nullable_schema(types);
        let keyed: Vec<usize> = primary_key
            .iter()
            .chain(unique.iter().flatten())
            .copied()
            .collect();
        crate::keys::indexable(&schema, &keyed)?;
        Ok(Entry {
            id: self.catalog.allocate_id(),
            name,
            kind: RelationKind::Table,
            schema,
            columns,
            primary_key,
            unique,
            create_sql: sql.trim().to_string(),
            view_plan: None,
            plan: None,
            depends_on: Vec::new(),
            source,
            append_only: false,
            indexes: Vec::new(),
        })
    }

    /// Create the input of table `entry` on the workers and enter it in
    /// the catalog (its catalog item already durable).
    pub(crate) async fn install_table(&self, entry: Entry) {
        self.create_table_input(&entry).await;
        self.catalog.insert(entry);
    }

    /// Create the input of table `entry` on the workers.
    pub(crate) async fn create_table_input(&self, entry: &Entry) {
        self.controller.send(weir_protocol::Command::CreateTable {
            id: entry.id,
            name: entry.name.clone(),
            schema: entry.schema.clone(),
            key: entry.primary_key.clone(),
            append_only: entry.append_only,
        });
        if let Err(e) = self.writes.lock().await.create(entry) {
            // Unreachable: `table_entry` checked the key columns' types.
            tracing::error!(table = %entry.name, error = %e, "the table's key indexes could not be made");
        }
    }

    async fn create_view(&self, cv: &ast::CreateView, sql: &str) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        let name = object_name(&cv.name);
        let tag = if cv.materialized {
            "CREATE MATERIALIZED VIEW"
        } else {
            "CREATE VIEW"
        };
        let existing = self.catalog.get(&name);
        if existing.is_none() && self.catalog.name_taken(&name) {
            // An index holds the name.
            return Err(SqlError::DuplicateRelation(name).into());
        }
        if let Some(existing) = existing {
            if cv.if_not_exists {
                return Ok(ExecuteResult::Command { tag: tag.into() });
            }
            if !cv.or_replace {
                return Err(SqlError::DuplicateRelation(name).into());
            }
            if !self.catalog.dependents(&name).is_empty() {
                return Err(AdapterError::DependentObjects {
                    kind: existing.kind_name(),
                    name: name.clone(),
                    dependents: self
                        .catalog
                        .dependents(&name)
                        .into_iter()
                        .map(|d| format!("{} {}", d.kind_name(), d.name))
                        .collect(),
                });
            }
        }
        let query = ast::Statement::Query(cv.query.clone());
        let depends_on = self.planner.references(&query);
        let mut plan = self.planner.bind(query, sql).await?;
        if !cv.columns.is_empty() && cv.columns.len() != plan.schema().fields().len() {
            return Err(SqlError::Plan(format!(
                "view has {} columns but {} column names were given",
                plan.schema().fields().len(),
                cv.columns.len()
            ))
            .into());
        }
        let names: Vec<String> = if cv.columns.is_empty() {
            pg_names(&cv.query, plan.schema().inner())
        } else {
            cv.columns.iter().map(|c| ident(&c.name)).collect()
        };
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(SqlError::DuplicateColumn(n.clone()).into());
            }
        }
        if !cv.materialized {
            // A view is inlined by name, so its plan must carry its column names.
            let exprs: Vec<_> = plan
                .schema()
                .columns()
                .into_iter()
                .zip(&names)
                .map(|(c, n)| col(c).alias(n))
                .collect();
            plan = LogicalPlanBuilder::from(plan).project(exprs)?.build()?;
        }
        let fields: Vec<(String, DataType)> = names
            .into_iter()
            .zip(plan.schema().fields())
            .map(|(n, f)| (n, f.data_type().clone()))
            .collect();
        let columns = fields
            .iter()
            .map(|(n, t)| ColumnDef {
                name: n.clone(),
                sql_type: weir_sql::types::sql_type_name(t),
                nullable: true,
                max_length: None,
            })
            .collect();
        let schema = nullable_schema(fields);
        let id = self.catalog.allocate_id();
        let (kind, view_plan, dataflow) = if cv.materialized {
            let optimized = self.planner.optimize(&plan, sql)?;
            let lowered = Arc::new(weir_sql::lower::lower(&optimized, self.catalog.as_ref())?);
            (RelationKind::MaterializedView, None, Some(lowered))
        } else {
            (RelationKind::View, Some(plan), None)
        };
        let mut ops: Vec<_> = self
            .catalog
            .get(&name)
            .map(|old| {
                old.item_ids()
                    .map(weir_persist::CatalogOp::Drop)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        ops.push(weir_persist::CatalogOp::Create(weir_persist::CatalogItem {
            id,
            sql: sql.trim().to_string(),
            shard: cv.materialized,
            detail: None,
        }));
        self.persist_catalog(ops).await?;
        if let Some(old) = self.catalog.remove(&name)
            && old.kind != RelationKind::View
        {
            self.stop_recording(old.id);
            self.controller.send(weir_protocol::Command::Drop { id: old.id });
        }
        if let Some(p) = &dataflow {
            self.controller.send(weir_protocol::Command::CreateDataflow {
                id,
                name: name.clone(),
                plan: p.clone(),
            });
        }
        self.catalog.insert(Entry {
            id,
            name: name.clone(),
            kind,
            schema,
            columns,
            primary_key: Vec::new(),
            unique: Vec::new(),
            create_sql: sql.trim().to_string(),
            view_plan,
            plan: dataflow,
            depends_on,
            source: None,
            append_only: false,
            indexes: Vec::new(),
        });
        if cv.materialized
            && let Some(entry) = self.catalog.get(&name)
        {
            self.record(&entry, None)?;
        }
        Ok(ExecuteResult::Command { tag: tag.into() })
    }

    async fn drop(
        &self,
        object_type: ObjectType,
        if_exists: bool,
        names: &[ast::ObjectName],
        cascade: bool,
    ) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        let (kind, tag) = match object_type {
            ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
            ObjectType::View => (RelationKind::View, "DROP VIEW"),
            ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
            other => return Err(unsupported(format!("DROP {other}"))),
        };
        for n in names {
            let name = object_name(n);
            let Some(entry) = self.catalog.get(&name) else {
                if if_exists {
                    continue;
                }
                return Err(SqlError::UndefinedTable { name, position: None }.into());
            };
            if entry.kind != kind {
                return Err(AdapterError::WrongObjectType {
                    name,
                    expected: kind_name(kind),
                });
            }
            refuse_source_fed(&entry)?;
            let dependents = self.catalog.dependents_closure(&name);
            if !dependents.is_empty() && !cascade {
                return Err(AdapterError::DependentObjects {
                    kind: kind_name(kind),
                    name,
                    dependents: dependents
                        .iter()
                        .map(|d| format!("{} {}", d.kind_name(), d.name))
                        .collect(),
                });
            }
            let doomed: Vec<Entry> = dependents.into_iter().chain(std::iter::once(entry)).collect();
            self.persist_catalog(
                doomed
                    .iter()
                    .flat_map(|e| e.item_ids())
                    .map(weir_persist::CatalogOp::Drop)
                    .collect(),
            )
            .await?;
            self.remove_entries(doomed).await;
        }
        Ok(ExecuteResult::Command { tag: tag.into() })
    }

    async fn write_dml(&self, plan: LogicalPlan) -> Result<ExecuteResult> {
        let LogicalPlan::Dml(DmlStatement {
            table_name,
            op,
            input,
            ..
        }) = plan
        else {
            return Err(AdapterError::Internal("expected a DML plan".into()));
        };
        let name = relation_name(&table_name).unwrap_or_default().to_string();
        let entry = self.entry(&name)?;
        if entry.kind != RelationKind::Table {
            return Err(AdapterError::WrongObjectType {
                name,
                expected: "table",
            });
        }
        refuse_source_fed(&entry)?;
        // A DELETE or UPDATE that pins the primary key and reads nothing
        // but its own rows takes them from the key index, which holds
        // every write queued before it: it waits for none of them to reach
        // the workers and asks the workers for nothing.
        let filtered = match (&op, input.as_ref()) {
            (WriteOp::Delete, plan) => Some(plan),
            (WriteOp::Update, LogicalPlan::Projection(p)) => Some(p.input.as_ref()),
            _ => None,
        };
        let restriction = match filtered {
            Some(plan) => key_restriction(&entry, plan)?,
            None => None,
        };
        let mut writes = self.writes.lock().await;
        let reads = Reads::of(input.as_ref())?;
        let local = restriction.is_some() && writes.has_rows(entry.id) && reads.one_scan();
        if local {
            // Paced under the write lock, so that the dataflows are never
            // more than one write behind and the views stay fresh.
            self.controller.catch_up(entry.id).await?;
        } else if reads.scans > 0 {
            // Any other statement that reads tables must see every write
            // queued before it; `INSERT ... VALUES` reads none and need
            // not wait.
            self.barrier().await?;
        }
        let (tag, inserted, deleted) = match op {
            WriteOp::Insert(_) => {
                let batch = self.run_as_table(&entry, input.as_ref().clone(), None).await?;
                ("INSERT 0", Some(batch), None)
            }
            WriteOp::Delete => {
                let batch = match restriction {
                    Some(r) if local => self.rows_by_key(&entry, &writes, &r, input.as_ref()).await?,
                    Some(r) => {
                        self.run_as_table(&entry, r.reader(input.as_ref()), Some(r.keys))
                            .await?
                    }
                    None => self.run_as_table(&entry, input.as_ref().clone(), None).await?,
                };
                ("DELETE", None, Some(batch))
            }
            WriteOp::Update => {
                let LogicalPlan::Projection(p) = input.as_ref() else {
                    return Err(unsupported("this form of UPDATE"));
                };
                if p.input.schema().fields().len() != entry.schema.fields().len() {
                    return Err(unsupported("UPDATE ... FROM"));
                }
                let (old, keys) = match &restriction {
                    Some(r) if local => (
                        self.rows_by_key(&entry, &writes, r, p.input.as_ref()).await?,
                        None,
                    ),
                    Some(r) => (
                        self.run_as_table(&entry, r.reader(p.input.as_ref()), Some(r.keys.clone()))
                            .await?,
                        Some(r.keys.clone()),
                    ),
                    None => (
                        self.run_as_table(&entry, p.input.as_ref().clone(), None).await?,
                        None,
                    ),
                };
                let new = match self.updated_rows(&entry, p, &old).await? {
                    Some(new) => new,
                    // `SET` has subqueries, so the statement read tables
                    // from the workers (`local` is false) and runs in full.
                    None => self.run_as_table(&entry, input.as_ref().clone(), keys).await?,
                };
                ("UPDATE", Some(new), Some(old))
            }
            other => return Err(unsupported(format!("{other}"))),
        };
        if let Some(b) = &inserted {
            validate(&entry, b)?;
        }
        let count = inserted
            .as_ref()
            .or(deleted.as_ref())
            .map(|b| b.num_rows())
            .unwrap_or(0);
        let updates = self.apply_write(&entry, &mut writes, inserted, deleted)?;
        let pending = self.commit(updates);
        drop(writes);
        if let Some(p) = pending {
            p.wait().await?;
        }
        Ok(ExecuteResult::Command {
            tag: format!("{tag} {count}").replace("INSERT 0 ", "INSERT 0 "),
        })
    }

    /// Check keys and record them, and return `inserted` and `deleted` as
    /// the updates to [`Coordinator::commit`]. The caller holds the write
    /// lock (`writes`).
    fn apply_write(
        &self,
        entry: &Entry,
        writes: &mut KeyIndexes,
        inserted: Option<RecordBatch>,
        deleted: Option<RecordBatch>,
    ) -> Result<Vec<TableUpdate>> {
        writes.apply(entry, inserted.as_ref(), deleted.as_ref())?;
        let mut updates = Vec::new();
        if let Some(b) = deleted.filter(|b| b.num_rows() > 0) {
            updates.push(TableUpdate {
                table: entry.id,
                batch: b,
                diff: -1,
            });
        }
        if let Some(b) = inserted.filter(|b| b.num_rows() > 0) {
            updates.push(TableUpdate {
                table: entry.id,
                batch: b,
                diff: 1,
            });
        }
        Ok(updates)
    }

    /// The new rows of an `UPDATE` whose `SET` reads only the row itself:
    /// its projection evaluated over the `old` rows, without reading the
    /// table again. `None` when `SET` has subqueries (they read other
    /// relations, so the statement runs in full).
    async fn updated_rows(
        &self,
        entry: &Entry,
        set: &datafusion::logical_expr::Projection,
        old: &RecordBatch,
    ) -> Result<Option<RecordBatch>> {
        let mut subqueries = false;
        for e in &set.expr {
            e.apply(|x| {
                subqueries |= matches!(
                    x,
                    datafusion::logical_expr::Expr::ScalarSubquery(_)
                        | datafusion::logical_expr::Expr::Exists(_)
                        | datafusion::logical_expr::Expr::InSubquery(_)
                );
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        if subqueries {
            return Ok(None);
        }
        // Each `SET` expression evaluated over the old rows directly
        // (type-coerced as the planner would): planning a query around
        // them costs more than the evaluation.
        let state = self.planner.state();
        let columns = set
            .expr
            .iter()
            .map(|e| {
                let physical = state.create_physical_expr(e.clone(), set.input.schema())?;
                physical.evaluate(old)?.into_array(old.num_rows())
            })
            .collect::<datafusion::common::Result<Vec<ArrayRef>>>()?;
        let fields: Vec<Field> = columns
            .iter()
            .zip(entry.schema.fields())
            .map(|(c, f)| Field::new(f.name(), c.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(old.num_rows())),
        )
        .map_err(|e| AdapterError::Internal(e.to_string()))?;
        Ok(Some(shape(entry, vec![batch])?))
    }

    /// The rows of keyed table `entry` that `filtered` (its scan under
    /// the statement's `WHERE`, restricted to keys by `r`) keeps, read
    /// from the key index rather than from the workers.
    async fn rows_by_key(
        &self,
        entry: &Entry,
        writes: &KeyIndexes,
        r: &KeyRestriction,
        filtered: &LogicalPlan,
    ) -> Result<RecordBatch> {
        let rows = writes.rows(entry, &r.keys)?;
        if r.whole {
            return Ok(rows);
        }
        // The rest of the `WHERE` decides, over just those rows.
        let tables = HashMap::from([(
            entry.name.clone(),
            (
                Arc::new(MemTable::try_new(entry.schema.clone(), vec![vec![rows]])?),
                None,
            ),
        )]);
        let plan = self.planner.optimize_oneshot(filtered, "")?;
        let (_, batches) = self.execute_over(plan, tables).await?;
        shape(entry, batches)
    }

    /// Run `plan` and shape the result as rows of `entry`.
    async fn run_as_table(
        &self,
        entry: &Entry,
        plan: LogicalPlan,
        keys: Option<Arc<Vec<Vec<u8>>>>,
    ) -> Result<RecordBatch> {
        let restriction = keys.map(|k| (entry.id, k));
        let (_, batches) = self.run_restricted(plan, restriction).await?;
        shape(entry, batches)
    }

    /// Insert a decoded batch (COPY).
    pub async fn insert_batch(&self, table: &str, batch: RecordBatch) -> Result<usize> {
        let entry = self.entry(table)?;
        validate(&entry, &batch)?;
        let n = batch.num_rows();
        let mut writes = self.writes.lock().await;
        let updates = self.apply_write(&entry, &mut writes, Some(batch), None)?;
        let pending = self.commit(updates);
        drop(writes);
        if let Some(p) = pending {
            p.wait().await?;
        }
        Ok(n)
    }

    fn copy_target(&self, copy: &CopyFrom) -> Result<ExecuteResult> {
        let entry = self.entry(&copy.table)?;
        refuse_source_fed(&entry)?;
        if entry.kind != RelationKind::Table {
            return Err(AdapterError::WrongObjectType {
                name: copy.table.clone(),
                expected: "table",
            });
        }
        let columns = if copy.columns.is_empty() {
            (0..entry.columns.len()).collect()
        } else {
            copy.columns
                .iter()
                .map(|c| {
                    entry.columns.iter().position(|x| &x.name == c).ok_or_else(|| {
                        AdapterError::UndefinedColumn {
                            table: entry.name.clone(),
                            column: c.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let mut format = if copy.csv {
            CopyFormat::csv()
        } else {
            CopyFormat::text()
        };
        format.header = copy.header;
        if let Some(d) = copy.delimiter {
            format.delimiter = d;
        }
        if let Some(n) = &copy.null {
            format.null = n.clone();
        }
        Ok(ExecuteResult::CopyIn(CopyTarget {
            table: entry.name,
            columns,
            format,
        }))
    }

    /// Decode and apply the data of a finished COPY.
    pub async fn finish_copy(&self, target: &CopyTarget, data: &[u8]) -> Result<usize> {
        let entry = self.entry(&target.table)?;
        let sub = Arc::new(Schema::new(
            target
                .columns
                .iter()
                .map(|i| entry.schema.field(*i).clone())
                .collect::<Vec<_>>(),
        ));
        let decoded = decode(data, &sub, &target.format).map_err(|e| match e {
            weir_connectors::copy::CopyError::InvalidValue { .. } => {
                AdapterError::InvalidTextRepresentation(e.to_string())
            }
            e => AdapterError::BadCopyFile(e.to_string()),
        })?;
        let n = decoded.num_rows();
        let columns: Vec<ArrayRef> = (0..entry.schema.fields().len())
            .map(|i| match target.columns.iter().position(|c| *c == i) {
                Some(p) => decoded.column(p).clone(),
                None => arrow::array::new_null_array(entry.schema.field(i).data_type(), n),
            })
            .collect();
        let batch = RecordBatch::try_new(entry.schema.clone(), columns)
            .map_err(|e| AdapterError::Internal(e.to_string()))?;
        self.insert_batch(&entry.name, batch).await
    }

    async fn subscribe(&self, target: &SubscribeTarget, copy_out: bool) -> Result<ExecuteResult> {
        let plan = match target {
            SubscribeTarget::Name(name) => {
                let e = self.entry(name)?;
                match e.kind {
                    RelationKind::View => {
                        let sql = format!("SELECT * FROM {name}");
                        self.plan_dataflow(&sql).await?
                    }
                    _ => {
                        let schema = Arc::new(DFSchema::try_from_qualified_schema(name.as_str(), &e.schema)?);
                        Plan {
                            node: PlanNode::Get {
                                id: e.id,
                                name: name.clone(),
                            },
                            schema,
                        }
                    }
                }
            }
            SubscribeTarget::Query(sql) => self.plan_dataflow(sql).await?,
        };
        let mut fields = vec![
            Field::new("weir_timestamp", DataType::Int64, false),
            Field::new("weir_diff", DataType::Int64, false),
        ];
        fields.extend(
            plan.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        let schema = Arc::new(Schema::new(fields));
        let (id, as_of, messages) = self.controller.subscribe(Arc::new(plan));
        Ok(ExecuteResult::Subscribe(Subscription {
            id,
            copy_out,
            as_of,
            schema,
            messages,
            workers: self.controller.workers(),
            controller: self.controller.clone(),
        }))
    }

    /// Plan a query all the way to the dataflow IR.
    async fn plan_dataflow(&self, sql: &str) -> Result<Plan> {
        let stmts = weir_sql::statement::parse(sql)?;
        let [stmt] = stmts.as_slice() else {
            return Err(SqlError::Syntax {
                message: "expected one query".into(),
                position: None,
            }
            .into());
        };
        let Statement::Sql(ast) = &stmt.statement else {
            return Err(unsupported("this statement inside SUBSCRIBE"));
        };
        if !matches!(ast.as_ref(), ast::Statement::Query(_)) {
            return Err(unsupported("this statement inside SUBSCRIBE"));
        }
        let plan = self.planner.bind(ast.as_ref().clone(), sql).await?;
        let plan = self.planner.optimize(&plan, sql)?;
        Ok(weir_sql::lower::lower(&plan, self.catalog.as_ref())?)
    }

    async fn explain(&self, statement: &ast::Statement, sql: &str) -> Result<ExecuteResult> {
        let query = match statement {
            ast::Statement::Query(q) => ast::Statement::Query(q.clone()),
            ast::Statement::CreateView(cv) => ast::Statement::Query(cv.query.clone()),
            other => {
                return Err(unsupported(format!(
                    "EXPLAIN {}",
                    first_words(&other.to_string())
                )));
            }
        };
        let plan = self.planner.bind(query, sql).await?;
        let plan = self.planner.optimize(&plan, sql)?;
        let lowered = weir_sql::lower::lower(&plan, self.catalog.as_ref())?;
        let text = lowered.to_string();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "Dataflow Plan",
            DataType::Utf8,
            false,
        )]));
        let lines: Vec<&str> = text.lines().collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])
            .map_err(|e| AdapterError::Internal(e.to_string()))?;
        Ok(ExecuteResult::Rows {
            schema,
            batches: vec![batch],
        })
    }

    /// The parameter types and result schema of a statement, for Describe,
    /// and the plan bound for them where executing it may reuse it.
    pub async fn describe(&self, stmt: &ParsedStatement) -> Result<Described> {
        match &stmt.statement {
            Statement::Sql(ast) => match ast.as_ref() {
                ast::Statement::Query(_)
                | ast::Statement::Insert(_)
                | ast::Statement::Update(_)
                | ast::Statement::Delete(_) => {
                    // Read before binding: a change to the catalog while
                    // binding leaves the plan marked stale.
                    let generation = self.catalog.generation();
                    let plan = self.bind(ast, &stmt.sql).await?;
                    let types = plan.get_parameter_types()?;
                    let mut params: Vec<(usize, Option<DataType>)> = types
                        .into_iter()
                        .filter_map(|(k, v)| k.trim_start_matches('$').parse::<usize>().ok().map(|i| (i, v)))
                        .collect();
                    params.sort_by_key(|(i, _)| *i);
                    let n = params.last().map(|(i, _)| *i).unwrap_or(0);
                    let mut out = vec![None; n];
                    for (i, t) in params {
                        out[i - 1] = t;
                    }
                    let schema = match ast.as_ref() {
                        ast::Statement::Query(q) => {
                            let s: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                            Some(renamed(&s, &pg_names(q, &s)))
                        }
                        _ => None,
                    };
                    let bound =
                        weir_sql::planner::plan_is_reusable(&plan).then_some(Bound { plan, generation });
                    Ok(Described {
                        params: out,
                        schema,
                        bound,
                    })
                }
                ast::Statement::Explain { .. } => {
                    Ok(Described::schema(Arc::new(Schema::new(vec![Field::new(
                        "Dataflow Plan",
                        DataType::Utf8,
                        false,
                    )]))))
                }
                _ => Ok(Described::default()),
            },
            Statement::Show(show) => Ok(Described::schema(crate::show::schema(self, show)?)),
            Statement::Subscribe {
                target,
                copy_out: false,
            } => Ok(Described::schema(self.subscribe_schema(target).await?)),
            _ => Ok(Described::default()),
        }
    }

    async fn subscribe_schema(&self, target: &SubscribeTarget) -> Result<SchemaRef> {
        let base: SchemaRef = match target {
            SubscribeTarget::Name(n) => self.entry(n)?.schema,
            SubscribeTarget::Query(sql) => Arc::new(self.plan_dataflow(sql).await?.schema.as_arrow().clone()),
        };
        let mut fields = vec![
            Field::new("weir_timestamp", DataType::Int64, false),
            Field::new("weir_diff", DataType::Int64, false),
        ];
        fields.extend(base.fields().iter().map(|f| f.as_ref().clone()));
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// The result column names PostgreSQL would give `query`.
fn pg_names(query: &ast::Query, schema: &Schema) -> Vec<String> {
    match weir_sql::names::output_names(query) {
        Some(n) if n.len() == schema.fields().len() => n,
        _ => schema.fields().iter().map(|f| f.name().clone()).collect(),
    }
}

fn renamed(schema: &Schema, names: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .zip(names)
            .map(|(f, n)| f.as_ref().clone().with_name(n))
            .collect::<Vec<_>>(),
    ))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Enforce NOT NULL and varchar lengths.
fn refuse_source_fed(entry: &Entry) -> Result<()> {
    match &entry.source {
        Some(source) => Err(AdapterError::SourceFed {
            table: entry.name.clone(),
            feeder: source.clone(),
        }),
        None => Ok(()),
    }
}

/// The durable catalog item of table `entry`.
pub(crate) fn table_item(entry: &Entry) -> weir_persist::CatalogOp {
    weir_persist::CatalogOp::Create(weir_persist::CatalogItem {
        id: entry.id,
        sql: entry.create_sql.clone(),
        shard: true,
        detail: None,
    })
}

/// The catalog item of `entry`, a source table's next version replacing
/// table version `replaces`.
pub(crate) fn table_version_item(entry: &Entry, replaces: GlobalId) -> weir_persist::CatalogOp {
    weir_persist::CatalogOp::Create(weir_persist::CatalogItem {
        id: entry.id,
        sql: entry.create_sql.clone(),
        shard: true,
        detail: Some(serde_json::json!({ "replaces": replaces }).to_string()),
    })
}

/// The table version a table's catalog item replaces, if any.
fn replaced_table(detail: Option<&str>) -> Option<GlobalId> {
    let v: serde_json::Value = serde_json::from_str(detail?).ok()?;
    v["replaces"].as_u64()
}

/// What a plan reads: its table scans (subqueries' included) and whether
/// it has a subquery.
struct Reads {
    scans: usize,
    subqueries: bool,
}

impl Reads {
    fn of(plan: &LogicalPlan) -> Result<Reads> {
        let mut reads = Reads {
            scans: 0,
            subqueries: false,
        };
        plan.apply_with_subqueries(|node| {
            reads.scans += usize::from(matches!(node, LogicalPlan::TableScan(_)));
            reads.subqueries |= matches!(node, LogicalPlan::Subquery(_));
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(reads)
    }

    /// Nothing but one scan of one table: no other relation, no subquery.
    fn one_scan(&self) -> bool {
        self.scans == 1 && !self.subqueries
    }
}

/// A relation's rows read for one statement, and which of its columns
/// they hold (`None`: all of them, in order).
type Scanned = (Arc<MemTable>, Option<Arc<Vec<usize>>>);

/// `plan` with its scans of relations named in `tables` reading those.
fn scanning(plan: LogicalPlan, tables: &HashMap<String, Scanned>) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => {
                let name = relation_name(&scan.table_name).map(str::to_string);
                match name.and_then(|n| tables.get(&n).cloned()) {
                    Some((t, held)) => {
                        // A scan's columns, as positions among those held.
                        let projection = match (&held, scan.projection) {
                            (Some(held), Some(p)) => Some(
                                p.iter()
                                    .map(|i| held.iter().position(|h| h == i))
                                    .collect::<Option<Vec<usize>>>()
                                    .ok_or_else(|| {
                                        datafusion::error::DataFusionError::Internal(
                                            "a scan reads a column not read".into(),
                                        )
                                    })?,
                            ),
                            (Some(_), None) => {
                                return Err(datafusion::error::DataFusionError::Internal(
                                    "a scan reads a column not read".into(),
                                ));
                            }
                            (None, p) => p,
                        };
                        let scan = TableScan {
                            source: provider_as_source(t),
                            projection,
                            ..scan
                        };
                        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                    }
                    None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
                }
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

fn validate(entry: &Entry, batch: &RecordBatch) -> Result<()> {
    for (i, c) in entry.columns.iter().enumerate() {
        let array = batch.column(i);
        if !c.nullable && array.null_count() > 0 {
            return Err(AdapterError::NotNullViolation {
                table: entry.name.clone(),
                column: c.name.clone(),
            });
        }
        if let (Some(max), DataType::Utf8) = (c.max_length, array.data_type()) {
            for v in array.as_string::<i32>().iter().flatten() {
                if v.chars().count() as u64 > max {
                    return Err(AdapterError::StringTooLong(max));
                }
            }
        }
    }
    Ok(())
}

/// The rows a `DELETE`/`UPDATE` touches when its `WHERE` pins the
/// (single-column) primary key with `=` or `IN` to constants.
struct KeyRestriction {
    /// The encoded keys: only these rows need reading, by key, instead of
    /// the whole table.
    keys: Arc<Vec<Vec<u8>>>,
    /// The `WHERE` is nothing but that test, on constants of the key's
    /// own type: the rows read by key are exactly the rows it keeps.
    whole: bool,
}

impl KeyRestriction {
    /// What reads the rows `plan` (a `Filter` over the table, as
    /// [`key_restriction`] found it) keeps.
    fn reader(&self, plan: &LogicalPlan) -> LogicalPlan {
        match plan {
            LogicalPlan::Filter(f) if self.whole => f.input.as_ref().clone(),
            other => other.clone(),
        }
    }
}

/// The key restriction of a `DELETE`'s or `UPDATE`'s filtered scan
/// `plan`, if its `WHERE` has one.
fn key_restriction(entry: &Entry, plan: &LogicalPlan) -> Result<Option<KeyRestriction>> {
    use datafusion::logical_expr::Expr;
    let [k] = entry.primary_key.as_slice() else {
        return Ok(None);
    };
    let LogicalPlan::Filter(filter) = plan else {
        return Ok(None);
    };
    if !matches!(filter.input.as_ref(), LogicalPlan::TableScan(_)) {
        return Ok(None);
    }
    let field = entry.schema.field(*k);
    let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == *field.name());
    // A literal of the key's own type compares as the key does; others
    // are cast for the lookup and the filter still decides.
    let mut exact = true;
    let mut constant = |e: &Expr| match e {
        Expr::Literal(v, _) => {
            exact &= v.data_type() == *field.data_type();
            Some(v.clone())
        }
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(v, _) => {
                exact = false;
                Some(v.clone())
            }
            _ => None,
        },
        _ => None,
    };
    let conjuncts = datafusion::logical_expr::utils::split_conjunction(&filter.predicate);
    let alone = conjuncts.len() == 1;
    let mut values: Option<Vec<ScalarValue>> = None;
    for conjunct in conjuncts {
        let found = match conjunct {
            Expr::BinaryExpr(b) if b.op == datafusion::logical_expr::Operator::Eq => {
                match (is_key(&b.left), is_key(&b.right)) {
                    (true, _) => constant(&b.right).map(|v| vec![v]),
                    (_, true) => constant(&b.left).map(|v| vec![v]),
                    _ => None,
                }
            }
            Expr::InList(l) if !l.negated && is_key(&l.expr) => l.list.iter().map(&mut constant).collect(),
            _ => None,
        };
        if found.is_some() {
            values = found;
            break;
        }
    }
    let Some(values) = values else {
        return Ok(None);
    };
    // Constants that do not convert to the key's type: read everything.
    let Some(values) = values
        .into_iter()
        .map(|v| v.cast_to(field.data_type()).ok())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let array = if values.is_empty() {
        arrow::array::new_null_array(field.data_type(), 0)
    } else {
        ScalarValue::iter_to_array(values).map_err(|e| AdapterError::Internal(e.to_string()))?
    };
    let mut columns: Vec<ArrayRef> = entry
        .schema
        .fields()
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), array.len()))
        .collect();
    columns[*k] = array;
    let batch = RecordBatch::try_new(entry.schema.clone(), columns)
        .map_err(|e| AdapterError::Internal(e.to_string()))?;
    Ok(Some(KeyRestriction {
        keys: Arc::new(key_rows(entry, &batch)?),
        whole: alone && exact,
    }))
}

/// Batches of a query's result as rows of `entry` (cast to its types).
fn shape(entry: &Entry, batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = if batches.is_empty() {
        entry
            .schema
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), 0))
            .collect()
    } else {
        let b = concat_batches(&batches[0].schema(), &batches)
            .map_err(|e| AdapterError::Internal(e.to_string()))?;
        b.columns().to_vec()
    };
    let columns = columns
        .into_iter()
        .zip(entry.schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type()).map_err(|e| AdapterError::Evaluation(e.to_string()))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(entry.schema.clone(), columns).map_err(|e| AdapterError::Internal(e.to_string()))
}
