//! Lowering: an optimized DataFusion `LogicalPlan` into the plan IR.
//!
//! Only constructs the engine maintains incrementally are accepted; anything
//! else is refused here, at `CREATE` time, with `0A000` naming the construct.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Distinct, Expr, ExprSchemable, JoinType, LogicalPlan};
use datafusion::physical_expr::create_physical_expr;

use crate::error::SqlError;
use crate::plan::{AggregateExpr, AggregateFunc, GeneralAggregate, JoinKind, Plan, PlanNode};
use crate::planner::{CatalogReader, RelationKind, relation_name};

/// Lower an optimized logical plan into the dataflow IR.
pub fn lower(plan: &LogicalPlan, catalog: &dyn CatalogReader) -> Result<Plan, SqlError> {
    Lowering {
        catalog,
        recursive: Vec::new(),
    }
    .lower(plan)
}

/// The state of one lowering: the catalog, and the `WITH RECURSIVE` names
/// in scope (a scan of one of them reads the fixpoint being computed).
struct Lowering<'a> {
    catalog: &'a dyn CatalogReader,
    recursive: Vec<String>,
}

impl Lowering<'_> {
    #[recursive::recursive]
    fn lower(&mut self, plan: &LogicalPlan) -> Result<Plan, SqlError> {
        let schema = plan.schema().clone();
        let node = match plan {
            LogicalPlan::TableScan(scan) => {
                let system = || {
                    SqlError::Unsupported(format!(
                        "materialized views over the system catalogs ({})",
                        scan.table_name
                    ))
                };
                let name = relation_name(&scan.table_name).ok_or_else(system)?;
                let (node, arrow_schema) = if let Some(batch) = table_function_rows(scan)? {
                    let schema = batch.schema();
                    (PlanNode::Constant { batch }, schema)
                } else if self.recursive.iter().any(|r| r == name) {
                    let node = PlanNode::RecursiveRef {
                        name: name.to_string(),
                    };
                    (node, scan.source.schema())
                } else {
                    let desc = match self.catalog.relation(name) {
                        Some(d) => d,
                        None if self
                            .catalog
                            .system_table_names("pg_catalog")
                            .iter()
                            .any(|n| n == name) =>
                        {
                            return Err(system());
                        }
                        None => {
                            return Err(SqlError::UndefinedTable {
                                name: name.to_string(),
                                position: None,
                            });
                        }
                    };
                    if desc.kind == RelationKind::View {
                        return Err(SqlError::Plan(format!("view {name} was not inlined")));
                    }
                    let node = PlanNode::Get {
                        id: desc.id,
                        name: desc.name.clone(),
                    };
                    (node, desc.schema.clone())
                };
                let full = Arc::new(
                    DFSchema::try_from_qualified_schema(scan.table_name.clone(), &arrow_schema)
                        .map_err(|e| SqlError::Plan(e.to_string()))?,
                );
                let get = Plan {
                    node,
                    schema: full.clone(),
                };
                let projection = match &scan.projection {
                    Some(indices) => indices.iter().map(|i| column(&full, *i)).collect(),
                    None => identity(&full),
                };
                let scanned = if scan.filters.is_empty() && scan.projection.is_none() {
                    get
                } else {
                    let node = PlanNode::MapFilterProject {
                        input: Box::new(get),
                        filters: scan.filters.clone(),
                        projection,
                    };
                    Plan {
                        node,
                        schema: schema.clone(),
                    }
                };
                match scan.fetch {
                    None => return Ok(scanned),
                    // LIMIT without ORDER BY, pushed into the scan: any rows will
                    // do, so take the first in whole-row order.
                    Some(limit) => {
                        let order = identity(&schema)
                            .into_iter()
                            .map(|e| e.sort(true, false))
                            .collect();
                        PlanNode::TopK {
                            input: Box::new(scanned),
                            order,
                            limit: Some(limit),
                            offset: 0,
                        }
                    }
                }
            }
            LogicalPlan::Projection(p) => {
                check_exprs(&p.expr)?;
                let input = self.lower(&p.input)?;
                if let Some((join, projection)) =
                    crate::cross_pushdown::push_below_constant_join(&input, &p.expr)
                {
                    return Ok(fuse(join, Vec::new(), Some(projection), schema));
                }
                return Ok(fuse(input, Vec::new(), Some(p.expr.clone()), schema));
            }
            LogicalPlan::Filter(f) => {
                check_exprs(std::slice::from_ref(&f.predicate))?;
                let input = self.lower(&f.input)?;
                let filters = split_conjunction(&f.predicate).into_iter().cloned().collect();
                return Ok(fuse(input, filters, None, schema));
            }
            LogicalPlan::SubqueryAlias(a) => {
                let mut input = self.lower(&a.input)?;
                input.schema = schema;
                return Ok(input);
            }
            LogicalPlan::Join(j) => {
                let kind = match j.join_type {
                    JoinType::Inner => JoinKind::Inner,
                    JoinType::Left => JoinKind::LeftOuter,
                    JoinType::Right => JoinKind::RightOuter,
                    JoinType::Full => JoinKind::FullOuter,
                    JoinType::LeftSemi => JoinKind::LeftSemi,
                    JoinType::RightSemi => JoinKind::RightSemi,
                    JoinType::LeftAnti if j.null_aware => {
                        if j.filter.is_some() {
                            return Err(SqlError::Unsupported("correlated NOT IN subqueries".into()));
                        }
                        JoinKind::LeftAntiNullAware
                    }
                    JoinType::LeftAnti => JoinKind::LeftAnti,
                    JoinType::RightAnti => JoinKind::RightAnti,
                    JoinType::LeftMark | JoinType::RightMark => {
                        return Err(SqlError::Unsupported("subqueries in this position".into()));
                    }
                };
                let (left_keys, right_keys): (Vec<Expr>, Vec<Expr>) = j.on.iter().cloned().unzip();
                check_exprs(&left_keys)?;
                check_exprs(&right_keys)?;
                if let Some(f) = &j.filter {
                    check_exprs(std::slice::from_ref(f))?;
                }
                PlanNode::Join {
                    left: Box::new(self.lower(&j.left)?),
                    right: Box::new(self.lower(&j.right)?),
                    left_keys,
                    right_keys,
                    residual: j.filter.clone(),
                    kind,
                    nulls_equal: j.null_equality == datafusion::common::NullEquality::NullEqualsNull,
                }
            }
            LogicalPlan::Aggregate(a) => {
                check_exprs(&a.group_expr)?;
                if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(SqlError::Unsupported("GROUPING SETS, CUBE and ROLLUP".into()));
                }
                let input_schema = a.input.schema();
                let n_keys = a.group_expr.len();
                let aggregates = a
                    .aggr_expr
                    .iter()
                    .enumerate()
                    .map(|(i, e)| aggregate(e, input_schema, schema.field(n_keys + i).data_type().clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let input = self.lower(&a.input)?;
                let (input, group_keys) =
                    crate::cross_pushdown::group_below_constant_join(&input, &a.group_expr, &a.aggr_expr)
                        .unwrap_or((input, a.group_expr.clone()));
                PlanNode::Reduce {
                    input: Box::new(input),
                    group_keys,
                    aggregates,
                }
            }
            LogicalPlan::Distinct(Distinct::All(input)) => PlanNode::Distinct {
                input: Box::new(self.lower(input)?),
            },
            LogicalPlan::Distinct(Distinct::On(_)) => {
                return Err(SqlError::Unsupported("DISTINCT ON".into()));
            }
            LogicalPlan::Union(u) => PlanNode::Union {
                inputs: u.inputs.iter().map(|i| self.lower(i)).collect::<Result<_, _>>()?,
            },
            LogicalPlan::Values(v) => PlanNode::Constant {
                batch: values_batch(&v.values, &v.schema)?,
            },
            LogicalPlan::EmptyRelation(e) => {
                let rows = usize::from(e.produce_one_row);
                let arrow: Arc<Schema> = Arc::new(e.schema.as_arrow().clone());
                let columns: Vec<ArrayRef> = arrow
                    .fields()
                    .iter()
                    .map(|f| new_null_array(f.data_type(), rows))
                    .collect();
                PlanNode::Constant {
                    batch: RecordBatch::try_new_with_options(
                        arrow,
                        columns,
                        &RecordBatchOptions::new().with_row_count(Some(rows)),
                    )
                    .map_err(|e| SqlError::Plan(e.to_string()))?,
                }
            }
            LogicalPlan::Sort(s) => {
                let Some(fetch) = s.fetch else {
                    // A view is a set: ordering only matters when a reader asks for it.
                    return self.lower(&s.input);
                };
                let order: Vec<Expr> = s.expr.iter().map(|e| e.expr.clone()).collect();
                check_exprs(&order)?;
                PlanNode::TopK {
                    input: Box::new(self.lower(&s.input)?),
                    order: s.expr.clone(),
                    limit: Some(fetch),
                    offset: 0,
                }
            }
            LogicalPlan::Limit(l) => {
                use datafusion::logical_expr::{FetchType, SkipType};
                let unsupported = || SqlError::Unsupported("LIMIT / OFFSET that are not constants".into());
                let skip = match l.get_skip_type().map_err(|e| SqlError::Plan(e.to_string()))? {
                    SkipType::Literal(n) => n,
                    SkipType::UnsupportedExpr => return Err(unsupported()),
                };
                let fetch = match l.get_fetch_type().map_err(|e| SqlError::Plan(e.to_string()))? {
                    FetchType::Literal(n) => n,
                    FetchType::UnsupportedExpr => return Err(unsupported()),
                };
                let input = self.lower(&l.input)?;
                match input.node {
                    // The optimizer pushes `skip + fetch` into the sort below.
                    PlanNode::TopK {
                        input,
                        order,
                        offset: 0,
                        ..
                    } => PlanNode::TopK {
                        input,
                        order,
                        limit: fetch,
                        offset: skip,
                    },
                    node => {
                        // LIMIT without ORDER BY: order by the whole row.
                        let input = Plan {
                            node,
                            schema: input.schema,
                        };
                        let order = identity(&input.schema)
                            .into_iter()
                            .map(|e| e.sort(true, false))
                            .collect();
                        PlanNode::TopK {
                            input: Box::new(input),
                            order,
                            limit: fetch,
                            offset: skip,
                        }
                    }
                }
            }
            LogicalPlan::Window(w) => {
                let mut partition_by: Option<&Vec<Expr>> = None;
                for e in &w.window_expr {
                    let inner = match e {
                        Expr::Alias(a) => a.expr.as_ref(),
                        e => e,
                    };
                    let Expr::WindowFunction(wf) = inner else {
                        return Err(SqlError::Unsupported(format!("window expression {e}")));
                    };
                    let p = &wf.params;
                    if p.filter.is_some() || p.distinct {
                        return Err(SqlError::Unsupported(format!(
                            "FILTER or DISTINCT in window function {}",
                            wf.fun
                        )));
                    }
                    // The engine compiles the same expression; refuse now what it would refuse.
                    datafusion::physical_planner::create_window_expr(
                        e,
                        w.input.schema(),
                        &ExecutionProps::new(),
                        &Default::default(),
                    )
                    .map_err(|err| SqlError::Unsupported(format!("window function {}: {err}", wf.fun)))?;
                    check_exprs(&p.args)?;
                    check_exprs(&p.partition_by)?;
                    let order: Vec<Expr> = p.order_by.iter().map(|s| s.expr.clone()).collect();
                    check_exprs(&order)?;
                    if let Some(f) = &p.filter {
                        check_exprs(std::slice::from_ref(f))?;
                    }
                    match partition_by {
                        None => partition_by = Some(&p.partition_by),
                        Some(q) if q != &p.partition_by => {
                            return Err(SqlError::Unsupported(
                                "window functions with different PARTITION BY in one window node".into(),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                PlanNode::Window {
                    input: Box::new(self.lower(&w.input)?),
                    partition_by: partition_by.cloned().unwrap_or_default(),
                    functions: w.window_expr.clone(),
                }
            }
            LogicalPlan::RecursiveQuery(r) => {
                let base = self.lower(&r.static_term)?;
                self.recursive.push(r.name.clone());
                let step = self.lower(&r.recursive_term);
                self.recursive.pop();
                let step = conform(step?, &base.schema)?;
                check_recursive_step(&step, &r.name)?;
                PlanNode::Recursive {
                    name: r.name.clone(),
                    base: Box::new(base),
                    step: Box::new(step),
                    distinct: r.is_distinct,
                }
            }
            LogicalPlan::Unnest(_) => return Err(SqlError::Unsupported("UNNEST".into())),
            LogicalPlan::Repartition(r) => return self.lower(&r.input),
            LogicalPlan::Subquery(_) => {
                return Err(SqlError::Unsupported(
                    "this correlated subquery (LATERAL subqueries are supported when they aggregate, \
                 or when they are correlated by equalities only)"
                        .into(),
                ));
            }
            other => {
                return Err(SqlError::Unsupported(format!(
                    "{} in a materialized view",
                    other
                        .display()
                        .to_string()
                        .split(':')
                        .next()
                        .unwrap_or("this plan node")
                )));
            }
        };
        Ok(Plan { node, schema })
    }
}

/// Cast `plan`'s columns to the types of `schema` where they differ, so
/// the rows of both encode alike.
fn conform(plan: Plan, schema: &DFSchemaRef) -> Result<Plan, SqlError> {
    let same = plan
        .schema
        .fields()
        .iter()
        .zip(schema.fields())
        .all(|(a, b)| a.data_type() == b.data_type());
    if same {
        return Ok(plan);
    }
    let projection = identity(&plan.schema)
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| c.cast_to(f.data_type(), plan.schema.as_ref()))
        .collect::<datafusion::common::Result<Vec<_>>>()
        .map_err(|e| SqlError::Plan(e.to_string()))?;
    Ok(Plan {
        node: PlanNode::MapFilterProject {
            input: Box::new(plan),
            filters: vec![],
            projection,
        },
        schema: schema.clone(),
    })
}

/// Refuse, in the recursive term of `WITH RECURSIVE`, what PostgreSQL
/// refuses there too and what the engine does not iterate: aggregation,
/// ordering and limits, window functions, nested recursion.
fn check_recursive_step(plan: &Plan, name: &str) -> Result<(), SqlError> {
    if !plan.reads_recursive(name) {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(SqlError::InvalidRecursion(format!(
            "{what} (in WITH RECURSIVE {name})"
        )))
    };
    match &plan.node {
        PlanNode::RecursiveRef { .. } | PlanNode::Get { .. } | PlanNode::Constant { .. } => Ok(()),
        PlanNode::MapFilterProject { input, .. } | PlanNode::Distinct { input } => {
            check_recursive_step(input, name)
        }
        PlanNode::Join { left, right, .. } => {
            check_recursive_step(left, name)?;
            check_recursive_step(right, name)
        }
        PlanNode::Union { inputs } => inputs.iter().try_for_each(|i| check_recursive_step(i, name)),
        PlanNode::Reduce { .. } => refuse("aggregates"),
        PlanNode::TopK { .. } => refuse("ORDER BY ... LIMIT"),
        PlanNode::Window { .. } => refuse("window functions"),
        PlanNode::Recursive { .. } => refuse("a nested WITH RECURSIVE"),
    }
}

/// Put a filter and/or projection on top of `input`. When `input` is itself
/// a MapFilterProject, the two fuse into one: the new expressions are
/// rewritten in terms of its input, so rows are decoded and encoded once.
pub(crate) fn fuse(
    input: Plan,
    filters: Vec<Expr>,
    projection: Option<Vec<Expr>>,
    schema: DFSchemaRef,
) -> Plan {
    let projection = projection.unwrap_or_else(|| identity(&input.schema));
    // A projection that only renames the columns, in order, costs nothing.
    let renames_only = filters.is_empty()
        && projection.len() == input.schema.fields().len()
        && projection
            .iter()
            .zip(identity(&input.schema))
            .all(|(p, c)| p.clone().unalias() == c);
    if renames_only {
        return Plan {
            node: input.node,
            schema,
        };
    }
    if let PlanNode::MapFilterProject {
        input: inner,
        filters: below,
        projection: proj,
    } = &input.node
    {
        let sub = |e: &Expr| substitute(e, &input.schema, proj);
        let fused_filters = filters.iter().map(sub).collect::<Option<Vec<_>>>();
        let fused_projection = projection.iter().map(sub).collect::<Option<Vec<_>>>();
        if let (Some(f), Some(p)) = (fused_filters, fused_projection) {
            let mut all = below.clone();
            all.extend(f);
            return Plan {
                node: PlanNode::MapFilterProject {
                    input: inner.clone(),
                    filters: all,
                    projection: p,
                },
                schema,
            };
        }
    }
    Plan {
        node: PlanNode::MapFilterProject {
            input: Box::new(input),
            filters,
            projection,
        },
        schema,
    }
}

/// Rewrite `e`, bound to the output of a projection (`schema`), in terms of
/// the projection's input. `None` if a column cannot be resolved.
fn substitute(e: &Expr, schema: &DFSchema, projection: &[Expr]) -> Option<Expr> {
    let mut ok = true;
    let out = e
        .clone()
        .transform(|x| match &x {
            Expr::Column(c) => match schema.index_of_column(c) {
                Ok(i) => Ok(Transformed::yes(projection[i].clone().unalias())),
                Err(_) => {
                    ok = false;
                    Ok(Transformed::no(x))
                }
            },
            _ => Ok(Transformed::no(x)),
        })
        .ok()?
        .data;
    ok.then_some(out)
}

fn column(schema: &DFSchema, i: usize) -> Expr {
    Expr::Column(Column::from(schema.qualified_field(i)))
}

/// One column reference per field of `schema`.
pub fn identity(schema: &DFSchema) -> Vec<Expr> {
    (0..schema.fields().len()).map(|i| column(schema, i)).collect()
}

/// Refuse expressions the engine cannot evaluate row by row.
fn check_exprs(exprs: &[Expr]) -> Result<(), SqlError> {
    for e in exprs {
        let mut found = None;
        e.apply(|e| {
            found = match e {
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                    Some("subqueries in this position")
                }
                Expr::OuterReferenceColumn(..) => Some("correlated subqueries in this position"),
                Expr::WindowFunction(_) => Some("window functions"),
                Expr::AggregateFunction(_) => Some("aggregates in this position"),
                Expr::Placeholder(_) => Some("parameters in a view definition"),
                Expr::GroupingSet(_) => Some("GROUPING SETS"),
                Expr::Unnest(_) => Some("UNNEST"),
                _ => None,
            };
            Ok(if found.is_some() {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
        .map_err(|e| SqlError::Plan(e.to_string()))?;
        if let Some(what) = found {
            return Err(SqlError::Unsupported(what.into()));
        }
        if e.is_volatile() {
            return Err(SqlError::Unsupported(format!(
                "volatile function in a materialized view ({e})"
            )));
        }
    }
    Ok(())
}

fn aggregate(e: &Expr, input_schema: &DFSchemaRef, output_type: DataType) -> Result<AggregateExpr, SqlError> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
        return Err(SqlError::Unsupported(format!("aggregate expression {e}")));
    };
    let name = func.name().to_ascii_lowercase();
    let builtin = matches!(name.as_str(), "count" | "sum" | "avg" | "mean" | "min" | "max");
    let sum_like = matches!(name.as_str(), "sum" | "avg" | "mean");
    let simple_arg = params.args.len() <= 1
        && params.args.first().is_none_or(|a| {
            !sum_like
                || a.get_type(input_schema.as_ref())
                    .is_ok_and(|t| accumulable_type(&t))
        });
    // `count(DISTINCT x)` counts the distinct values the engine keeps
    // apart; `min`/`max` of distinct values are those of all values.
    let distinct = params.distinct && name == "count";
    let distinct_kept = distinct || matches!(name.as_str(), "min" | "max");
    if !builtin || (params.distinct && !distinct_kept) || !params.order_by.is_empty() || !simple_arg {
        check_exprs(&params.args)?;
        if let Some(f) = &params.filter {
            check_exprs(std::slice::from_ref(f))?;
        }
        let order: Vec<Expr> = params.order_by.iter().map(|s| s.expr.clone()).collect();
        check_exprs(&order)?;
        return Ok(AggregateExpr {
            func: AggregateFunc::General,
            arg: None,
            filter: None,
            distinct: false,
            input_type: DataType::Null,
            output_type,
            general: Some(GeneralAggregate {
                udaf: func.clone(),
                args: params.args.clone(),
                distinct: params.distinct,
                filter: params.filter.as_deref().cloned(),
                order_by: params.order_by.clone(),
                ignore_nulls: params.null_treatment
                    == Some(datafusion::logical_expr::expr::NullTreatment::IgnoreNulls),
            }),
        });
    }
    let arg = match params.args.as_slice() {
        [] => None,
        [a] => {
            check_exprs(std::slice::from_ref(a))?;
            Some(a.clone())
        }
        _ => {
            return Err(SqlError::Unsupported(format!("{name} with several arguments")));
        }
    };
    let filter = params.filter.as_deref().cloned();
    if let Some(f) = &filter {
        check_exprs(std::slice::from_ref(f))?;
    }
    let func = match (name.as_str(), &arg) {
        // A filtered count(*) counts the rows where the filter holds: a
        // count of its (non-NULL) argument, `true` there.
        ("count", Some(_)) if distinct => AggregateFunc::Count,
        ("count", None) if filter.is_some() => AggregateFunc::Count,
        ("count", Some(Expr::Literal(v, _))) if !v.is_null() && filter.is_some() => AggregateFunc::Count,
        ("count", None) => AggregateFunc::CountStar,
        ("count", Some(Expr::Literal(v, _))) if !v.is_null() => AggregateFunc::CountStar,
        ("count", Some(_)) => AggregateFunc::Count,
        ("sum", Some(_)) => AggregateFunc::Sum,
        ("avg" | "mean", Some(_)) => AggregateFunc::Avg,
        ("min", Some(_)) => AggregateFunc::Min,
        ("max", Some(_)) => AggregateFunc::Max,
        _ => {
            return Err(SqlError::Unsupported(format!(
                "aggregate function {name} in a materialized view"
            )));
        }
    };
    let (arg, input_type) = match (func, arg) {
        (AggregateFunc::CountStar, _) => (None, DataType::Null),
        // A filtered count(*): its argument is `true` where it counts.
        (_, None) => (None, DataType::Boolean),
        (_, Some(a)) => {
            let t = a
                .get_type(input_schema.as_ref())
                .map_err(|e| SqlError::Plan(e.to_string()))?;
            (Some(a), t)
        }
    };
    if matches!(func, AggregateFunc::Sum | AggregateFunc::Avg) && !accumulable_type(&input_type) {
        return Err(SqlError::Unsupported(format!("{name} over {input_type}")));
    }
    Ok(AggregateExpr {
        func,
        arg,
        filter,
        distinct,
        input_type,
        output_type,
        general: None,
    })
}

/// Types whose sums the engine keeps exactly (or as f64 for floats).
pub fn accumulable_type(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Null)
}

/// Evaluate the rows of a `VALUES` list into a batch of the plan's schema.
pub fn values_batch(values: &[Vec<Expr>], schema: &DFSchemaRef) -> Result<RecordBatch, SqlError> {
    let arrow: Arc<Schema> = Arc::new(schema.as_arrow().clone());
    let empty = DFSchema::empty();
    let props = ExecutionProps::new();
    let one = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .map_err(|e| SqlError::Plan(e.to_string()))?;
    let mut columns = Vec::with_capacity(arrow.fields().len());
    for (c, field) in arrow.fields().iter().enumerate() {
        let mut scalars = Vec::with_capacity(values.len());
        for row in values {
            let expr = &row[c];
            let value = match expr {
                Expr::Literal(v, _) => v.clone(),
                _ => {
                    let phys = create_physical_expr(expr, &empty, &props, &Default::default())
                        .map_err(|e| SqlError::from_datafusion(e, ""))?;
                    let v = phys
                        .evaluate(&one)
                        .map_err(|e| SqlError::from_datafusion(e, ""))?;
                    match v {
                        datafusion::logical_expr::ColumnarValue::Scalar(s) => s,
                        datafusion::logical_expr::ColumnarValue::Array(a) => {
                            ScalarValue::try_from_array(&a, 0).map_err(|e| SqlError::Plan(e.to_string()))?
                        }
                    }
                }
            };
            scalars.push(value);
        }
        let array = if scalars.is_empty() {
            new_null_array(field.data_type(), 0)
        } else {
            let a = ScalarValue::iter_to_array(scalars).map_err(|e| SqlError::Plan(e.to_string()))?;
            cast(&a, field.data_type()).map_err(|e| SqlError::from_datafusion(e.into(), ""))?
        };
        columns.push(array);
    }
    RecordBatch::try_new_with_options(
        arrow,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(values.len())),
    )
    .map_err(|e| SqlError::Plan(e.to_string()))
}

/// The most rows a table function may give a view (they are computed once
/// and held as constants).
const MAX_CONSTANT_ROWS: usize = 1_000_000;

/// The rows of a table function called with constants
/// (`generate_series(0, 9999)`), computed once when the view is created;
/// `None` for a scan of anything else.
fn table_function_rows(scan: &datafusion::logical_expr::TableScan) -> Result<Option<RecordBatch>, SqlError> {
    use datafusion::datasource::DefaultTableSource;
    use datafusion::functions_table::generate_series::GenerateSeriesTable;
    let Some(source) = scan.source.as_ref().downcast_ref::<DefaultTableSource>() else {
        return Ok(None);
    };
    let Some(table) =
        (source.table_provider.as_ref() as &dyn std::any::Any).downcast_ref::<GenerateSeriesTable>()
    else {
        return Ok(None);
    };
    let failed = |e: datafusion::error::DataFusionError| SqlError::Plan(e.to_string());
    let generator = table.as_generator(8192).map_err(failed)?;
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(batch) = generator.write().generate_next_batch().map_err(failed)? {
        rows += batch.num_rows();
        if rows > MAX_CONSTANT_ROWS {
            return Err(SqlError::Unsupported(format!(
                "{} of more than {MAX_CONSTANT_ROWS} rows in a view",
                scan.table_name
            )));
        }
        batches.push(batch);
    }
    let schema = datafusion::catalog::TableProvider::schema(table);
    arrow::compute::concat_batches(&schema, &batches)
        .map(Some)
        .map_err(|e| SqlError::Plan(e.to_string()))
}
