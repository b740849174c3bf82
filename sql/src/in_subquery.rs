//! `x [NOT] IN (SELECT y ...)` and `[NOT] EXISTS (...)` as values (in a
//! select list, a `CASE`, ...).
//!
//! DataFusion decorrelates `IN` subqueries that are conjuncts of a `WHERE`
//! into semi and anti joins, but neither plans nor executes one used as a
//! value. With SQL's three-valued logic, `x IN S` is: false when `S` is
//! empty; otherwise NULL when `x` is NULL; true when some `y = x`; NULL
//! when `S` holds a NULL; false otherwise. Each of those facts is a count
//! over `S` (the matching one correlated on `x`), i.e. a scalar subquery
//! that aggregates, which both executors handle. This module rewrites `IN`
//! subqueries outside filters into exactly that `CASE`.

use std::ops::Not;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::expr::InSubquery;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, LogicalPlanBuilder, Subquery, lit, when};

/// Rewrite every `IN` or `EXISTS` subquery used as a value in `plan`.
pub fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let Some(input) = node.inputs().first().map(|i| i.schema().clone()) else {
            return Ok(Transformed::no(node));
        };
        // A filter's top-level `[NOT] IN` / `[NOT] EXISTS` conjuncts become
        // semi and anti joins in DataFusion; only the others (under `OR`,
        // in a `CASE`, ...) need counting.
        if let LogicalPlan::Filter(f) = &node {
            let mut changed = false;
            let mut conjuncts = Vec::new();
            for c in split_conjunction(&f.predicate) {
                if is_join_predicate(c) {
                    conjuncts.push(c.clone());
                } else {
                    let t = c.clone().transform_up(|x| to_counts(x, &input))?;
                    changed |= t.transformed;
                    conjuncts.push(t.data);
                }
            }
            if !changed {
                return Ok(Transformed::no(node));
            }
            let predicate = conjunction(conjuncts).expect("a filter has a predicate");
            return Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                predicate,
                f.input.clone(),
            )?)));
        }
        crate::decorrelate::map_expressions_keeping_names(node, |e| e.transform_up(|x| to_counts(x, &input)))
    })
    .map(|t| t.data)
}

/// `[NOT] IN (subquery)` or `[NOT] EXISTS (subquery)` on its own.
fn is_join_predicate(e: &Expr) -> bool {
    match e {
        Expr::Exists(_) | Expr::InSubquery(_) => true,
        Expr::Not(inner) => matches!(inner.as_ref(), Expr::Exists(_) | Expr::InSubquery(_)),
        _ => false,
    }
}

/// One expression node: an `IN` or `EXISTS` subquery as counts.
fn to_counts(x: Expr, input: &datafusion::common::DFSchemaRef) -> Result<Transformed<Expr>> {
    match x {
        Expr::InSubquery(i) => match as_counts(&i, input)? {
            Some(e) => Ok(Transformed::yes(e)),
            None => Ok(Transformed::no(Expr::InSubquery(i))),
        },
        // `EXISTS (...)` as a value: whether its count is positive.
        Expr::Exists(e) => {
            // Count below the select list, so the correlated filter under it
            // still sees the columns it compares.
            let rows = match e.subquery.subquery.as_ref() {
                LogicalPlan::Projection(p) => p.input.as_ref().clone(),
                other => other.clone(),
            };
            let plan = LogicalPlanBuilder::from(rows)
                .aggregate(Vec::<Expr>::new(), vec![count(lit(1)).alias("__weir_n")])?
                .project(vec![datafusion::logical_expr::col("__weir_n")])?
                .build()?;
            let some = Expr::ScalarSubquery(Subquery {
                subquery: Arc::new(plan),
                ..e.subquery
            })
            .gt(lit(0i64));
            Ok(Transformed::yes(if e.negated { some.not() } else { some }))
        }
        other => Ok(Transformed::no(other)),
    }
}

fn as_counts(i: &InSubquery, input: &datafusion::common::DFSchemaRef) -> Result<Option<Expr>> {
    // The value tested: an outer column (correlating the count of matches),
    // or a constant (nothing to correlate).
    let (outer, correlated) = match i.expr.as_ref() {
        Expr::Column(x) => {
            let Ok((_, field)) = input.qualified_field_from_column(x) else {
                return Ok(None);
            };
            (Expr::OuterReferenceColumn(field.clone(), x.clone()), true)
        }
        e if e.column_refs().is_empty() && !e.is_volatile() => (e.clone(), false),
        _ => return Ok(None),
    };
    let set = i.subquery.subquery.as_ref();
    if set.schema().fields().len() != 1 {
        return Ok(None);
    }
    let y = Expr::Column(Column::from(set.schema().qualified_field(0)));
    let count_where = |predicate: Option<Expr>, correlated: bool| -> Result<Expr> {
        let mut b = LogicalPlanBuilder::from(set.clone());
        if let Some(p) = predicate {
            b = b.filter(p)?;
        }
        let plan = b
            .aggregate(Vec::<Expr>::new(), vec![count(lit(1)).alias("__weir_n")])?
            .project(vec![datafusion::logical_expr::col("__weir_n")])?
            .build()?;
        let mut outer_ref_columns = i.subquery.outer_ref_columns.clone();
        if correlated {
            outer_ref_columns.push(outer.clone());
        }
        Ok(Expr::ScalarSubquery(Subquery {
            subquery: Arc::new(plan),
            outer_ref_columns,
            spans: Default::default(),
        })
        .gt(lit(0i64)))
    };
    let any = count_where(None, false)?;
    let matched = count_where(Some(y.clone().eq(outer.clone())), correlated)?;
    let nulls = count_where(Some(y.is_null()), false)?;
    let null = Expr::Literal(datafusion::common::ScalarValue::Boolean(None), None);
    let value = when(any.not(), lit(false))
        .when(i.expr.as_ref().clone().is_null(), null.clone())
        .when(matched, lit(true))
        .when(nulls, null)
        .otherwise(lit(false))?;
    Ok(Some(if i.negated { value.not() } else { value }))
}
