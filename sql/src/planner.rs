//! Binding SQL against the catalog with DataFusion.
//!
//! The [`Planner`] owns a DataFusion `SessionState` whose only catalog is an
//! adapter over the coordinator's [`CatalogReader`]. Tables and materialized
//! views appear to DataFusion as schema-only relations; ordinary views are
//! DataFusion views and are inlined where they are used.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion::sql::sqlparser::ast;

use crate::error::SqlError;
use crate::plan::GlobalId;

/// The name of Weir's one catalog and schema, as DataFusion sees them.
pub const CATALOG: &str = "weir";
pub const SCHEMA: &str = "public";

/// What kind of relation a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    View,
    MaterializedView,
}

/// What the planner needs to know about a relation.
#[derive(Debug, Clone)]
pub struct RelationDesc {
    pub id: GlobalId,
    pub name: String,
    pub kind: RelationKind,
    pub schema: SchemaRef,
    /// For views: the bound definition, inlined where the view is used.
    pub view_plan: Option<LogicalPlan>,
    pub definition: String,
}

/// A read-only view of the coordinator's catalog.
pub trait CatalogReader: Send + Sync + std::fmt::Debug {
    fn relation(&self, name: &str) -> Option<RelationDesc>;
    fn relation_names(&self) -> Vec<String>;
    /// A relation of one of [`SYSTEM_SCHEMAS`], computed from the catalog
    /// as it is now.
    fn system_table(&self, schema: &str, name: &str) -> Option<arrow::array::RecordBatch>;
    fn system_table_names(&self, schema: &str) -> Vec<String>;
}

/// The read-only schemas describing the catalog: PostgreSQL's (for psql
/// and drivers) and Weir's own.
pub const SYSTEM_SCHEMAS: [&str; 3] = ["pg_catalog", "information_schema", "weir_catalog"];

/// Plans statements against a catalog.
#[derive(Clone)]
pub struct Planner {
    /// Binds statements and runs one-shot queries.
    state: SessionState,
    /// Optimizes plans for dataflows: the same, except that every scalar
    /// subquery becomes a join (DataFusion's batch executor runs
    /// uncorrelated ones separately, which a dataflow cannot).
    dataflow_state: SessionState,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").finish_non_exhaustive()
    }
}

impl Planner {
    pub fn new(catalog: Arc<dyn CatalogReader>) -> Self {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false)
            .with_target_partitions(2);
        let options = config.options_mut();
        options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        options.sql_parser.collect_spans = true;
        options.sql_parser.enable_ident_normalization = true;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        // PostgreSQL spells sample variance `variance`.
        let variance = datafusion::functions_aggregate::variance::var_samp_udaf()
            .as_ref()
            .clone();
        let _ = datafusion::execution::FunctionRegistry::register_udaf(
            &mut state,
            Arc::new(variance.with_aliases(["variance"])),
        );
        crate::pg_compat::register_functions(&mut state);
        state.catalog_list().register_catalog(
            CATALOG.into(),
            Arc::new(WeirCatalog(Arc::new(WeirSchema(catalog)))),
        );
        let mut dataflow_config = state.config().clone();
        dataflow_config
            .options_mut()
            .optimizer
            .enable_physical_uncorrelated_scalar_subquery = false;
        let dataflow_state = SessionStateBuilder::new_from_existing(state.clone())
            .with_config(dataflow_config)
            .build();
        Planner {
            state,
            dataflow_state,
        }
    }

    /// The DataFusion session state, for executing one-shot queries.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Bind a statement into an unoptimized `LogicalPlan`.
    pub async fn bind(&self, mut statement: ast::Statement, sql: &str) -> Result<LogicalPlan, SqlError> {
        crate::pg_compat::rewrite(&mut statement);
        let lists = crate::constant_lists::take(&mut statement);
        let plan = if lists.is_empty() {
            self.statement_to_plan(statement).await
        } else {
            let bound = self.statement_to_plan(statement.clone()).await;
            match bound.and_then(|plan| crate::constant_lists::restore(plan, &lists)) {
                Ok(Some(plan)) => Ok(plan),
                // The statement as written binds, or says what is wrong.
                _ => {
                    crate::constant_lists::put_back(&mut statement, lists);
                    self.statement_to_plan(statement).await
                }
            }
        };
        let plan = plan.map_err(|e| SqlError::from_datafusion(e, sql))?;
        let plan = crate::set_ops::number_duplicates(plan).map_err(|e| SqlError::from_datafusion(e, sql))?;
        bytea_literals(plan).map_err(|e| SqlError::from_datafusion(e, sql))
    }

    async fn statement_to_plan(&self, statement: ast::Statement) -> DfResult<LogicalPlan> {
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(statement));
        self.state.statement_to_plan(statement).await
    }

    /// Run DataFusion's analyzer (type coercion) and optimizer over a plan
    /// that will become a dataflow, decorrelating what DataFusion leaves.
    pub fn optimize(&self, plan: &LogicalPlan, sql: &str) -> Result<LogicalPlan, SqlError> {
        let optimized = Self::optimize_with(&self.dataflow_state, plan, sql)?;
        crate::extreme_join::rewrite(optimized).map_err(|e| SqlError::from_datafusion(e, sql))
    }

    /// Optimize a plan that DataFusion's executor will run once.
    pub fn optimize_oneshot(&self, plan: &LogicalPlan, sql: &str) -> Result<LogicalPlan, SqlError> {
        Self::optimize_with(&self.state, plan, sql)
    }

    fn optimize_with(state: &SessionState, plan: &LogicalPlan, sql: &str) -> Result<LogicalPlan, SqlError> {
        let err = |e| SqlError::from_datafusion(e, sql);
        // Before DataFusion's optimizer, which prunes the outer columns a
        // subquery reads from its input.
        let aggregated = crate::single_row::aggregate_scalar_subqueries(plan.clone()).map_err(err)?;
        let aggregated = crate::in_subquery::rewrite(aggregated).map_err(err)?;
        let decorrelated = crate::decorrelate::decorrelate(aggregated).map_err(err)?;
        state.optimize(&decorrelated).map_err(err)
    }

    /// The names of relations a statement refers to directly (views are not
    /// looked through).
    pub fn references(&self, statement: &ast::Statement) -> Vec<String> {
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(statement.clone()));
        self.state
            .resolve_table_references(&statement)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.table().to_string())
            .collect()
    }
}

/// Read string literals cast to `bytea` and `interval` the way PostgreSQL
/// does (`'\\x0a'` is one byte; `'1 day 02:00:00'` is an interval), where
/// Arrow's parsers differ.
fn bytea_literals(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::common::ScalarValue;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Cast;
    plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|e| {
            e.transform_up(|e| match e {
                Expr::Cast(Cast { expr, field }) if field.data_type() == &DataType::Binary => {
                    match expr.as_ref() {
                        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => match decode_bytea(s) {
                            Some(bytes) => Ok(Transformed::yes(Expr::Literal(
                                ScalarValue::Binary(Some(bytes)),
                                None,
                            ))),
                            None => Err(DataFusionError::Execution(format!(
                                "invalid input syntax for type bytea: \"{s}\""
                            ))),
                        },
                        _ => Ok(Transformed::no(Expr::Cast(Cast { expr, field }))),
                    }
                }
                Expr::Cast(Cast { expr, field }) if matches!(field.data_type(), DataType::Interval(_)) => {
                    match expr.as_ref() {
                        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => {
                            match crate::types::parse_interval(s) {
                                Some(v) => Ok(Transformed::yes(Expr::Literal(
                                    ScalarValue::IntervalMonthDayNano(Some(v)),
                                    None,
                                ))),
                                None => Ok(Transformed::no(Expr::Cast(Cast { expr, field }))),
                            }
                        }
                        _ => Ok(Transformed::no(Expr::Cast(Cast { expr, field }))),
                    }
                }
                e => Ok(Transformed::no(e)),
            })
        })
    })
    .map(|t| t.data)
}

/// PostgreSQL's bytea input: `\x` followed by hex digits, or raw text.
pub fn decode_bytea(s: &str) -> Option<Vec<u8>> {
    match s.strip_prefix("\\x") {
        Some(hex) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect(),
        Some(_) => None,
        None => Some(s.as_bytes().to_vec()),
    }
}

/// DataFusion's view of a table or materialized view: a schema, never
/// scanned through DataFusion (the coordinator substitutes snapshots).
#[derive(Debug)]
pub struct RelationTable {
    pub desc: RelationDesc,
}

#[async_trait]
impl TableProvider for RelationTable {
    fn schema(&self) -> SchemaRef {
        self.desc.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.desc.kind {
            RelationKind::Table => TableType::Base,
            _ => TableType::View,
        }
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Internal(format!(
            "relation {} must be read through a snapshot",
            self.desc.name
        )))
    }
}

#[derive(Debug)]
struct WeirCatalog(Arc<WeirSchema>);

impl CatalogProvider for WeirCatalog {
    fn schema_names(&self) -> Vec<String> {
        std::iter::once(SCHEMA)
            .chain(SYSTEM_SCHEMAS)
            .map(String::from)
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SCHEMA {
            return Some(self.0.clone() as Arc<dyn SchemaProvider>);
        }
        let system = SYSTEM_SCHEMAS.into_iter().find(|s| *s == name)?;
        Some(Arc::new(SystemSchema {
            catalog: self.0.0.clone(),
            schema: system,
        }))
    }
}

/// One of [`SYSTEM_SCHEMAS`]: each relation is computed when a statement
/// names it.
#[derive(Debug)]
struct SystemSchema {
    catalog: Arc<dyn CatalogReader>,
    schema: &'static str,
}

fn system_table(
    catalog: &dyn CatalogReader,
    schema: &str,
    name: &str,
) -> DfResult<Option<Arc<dyn TableProvider>>> {
    let Some(batch) = catalog.system_table(schema, name) else {
        return Ok(None);
    };
    let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    Ok(Some(Arc::new(table)))
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.system_table_names(self.schema)
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        system_table(self.catalog.as_ref(), self.schema, name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|n| n == name)
    }
}

#[derive(Debug)]
struct WeirSchema(Arc<dyn CatalogReader>);

#[async_trait]
impl SchemaProvider for WeirSchema {
    fn table_names(&self) -> Vec<String> {
        self.0.relation_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(desc) = self.0.relation(name) else {
            // As in PostgreSQL, pg_catalog is on the search path.
            return system_table(self.0.as_ref(), "pg_catalog", name);
        };
        Ok(Some(match (&desc.kind, &desc.view_plan) {
            (RelationKind::View, Some(plan)) => {
                Arc::new(ViewTable::new(plan.clone(), Some(desc.definition.clone())))
            }
            _ => Arc::new(RelationTable { desc }),
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.relation(name).is_some()
    }
}

/// Whether a bound plan stays right for as long as the catalog does not
/// change, so that a prepared statement may run it again without binding
/// anew: true unless it reads a system relation (pg_catalog and the like),
/// whose rows are taken when the statement is bound.
pub fn plan_is_reusable(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::datasource::source_as_provider;
    let mut reusable = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source).ok();
            let any = provider.as_deref().map(|p| p as &dyn std::any::Any);
            reusable &= match any {
                Some(a) if a.is::<RelationTable>() => true,
                Some(a) => a
                    .downcast_ref::<ViewTable>()
                    .is_some_and(|v| plan_is_reusable(v.logical_plan())),
                None => false,
            };
        }
        Ok(if reusable {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    reusable
}

/// The relation a DataFusion table reference names, if it is in our schema.
pub fn relation_name(reference: &TableReference) -> Option<&str> {
    match reference.schema() {
        None | Some(SCHEMA) => Some(reference.table()),
        _ => None,
    }
}
