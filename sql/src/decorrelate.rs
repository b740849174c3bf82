//! Decorrelating scalar subqueries whose correlation is not an equality.
//!
//! DataFusion turns equality-correlated scalar subqueries into joins and
//! leaves the rest, which neither its executor nor a dataflow can run. For
//! the common shape `(SELECT agg(...) FROM ... WHERE <predicate on outer
//! columns>)` this module rewrites the subquery over the *domain* of the
//! outer columns it reads (their distinct values), grouped by that domain,
//! and left-joins the result back on null-safe equality. `count` of an empty
//! group becomes 0, as SQL requires. Shapes it does not recognize are left
//! unchanged (and reported as unsupported downstream).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Projection, Subquery, col, lit,
};

/// Rewrite every recognizable correlated scalar subquery in `plan`.
pub fn decorrelate(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut counter = 0;
    plan.transform_up(|node| {
        rewrite_node(node, &mut counter)?.transform_data(|n| crate::lateral::rewrite(n, &mut counter))
    })
    .map(|t| t.data)
}

fn rewrite_node(node: LogicalPlan, counter: &mut usize) -> Result<Transformed<LogicalPlan>> {
    let (exprs, input, is_filter) = match &node {
        LogicalPlan::Projection(p) => (p.expr.clone(), p.input.clone(), false),
        LogicalPlan::Filter(f) => (vec![f.predicate.clone()], f.input.clone(), true),
        _ => return Ok(Transformed::no(node)),
    };
    let mut input = Arc::unwrap_or_clone(input);
    let mut exprs = exprs;
    let mut changed = false;
    loop {
        let Some(sub) = exprs.iter().find_map(find_correlated) else {
            break;
        };
        let Some((joined, value)) = join_subquery(input.clone(), &sub, counter)? else {
            break;
        };
        input = joined;
        exprs = exprs
            .into_iter()
            .map(|e| {
                e.transform_up(|x| match &x {
                    Expr::ScalarSubquery(s) if s == &sub => Ok(Transformed::yes(value.clone())),
                    _ => Ok(Transformed::no(x)),
                })
                .map(|t| t.data)
            })
            .collect::<Result<_>>()?;
        changed = true;
    }
    if !changed {
        return Ok(Transformed::no(node));
    }
    let original_columns: Vec<Expr> = node.schema().columns().into_iter().map(Expr::Column).collect();
    let rebuilt = if is_filter {
        LogicalPlanBuilder::from(input)
            .filter(exprs.remove(0))?
            .project(original_columns)?
            .build()?
    } else {
        // Keep the projection's output schema (names included) exactly, so
        // the nodes above still resolve their columns.
        LogicalPlan::Projection(Projection::try_new_with_schema(
            exprs,
            Arc::new(input),
            node.schema().clone(),
        )?)
    };
    Ok(Transformed::yes(rebuilt))
}

/// Rewrite every expression of `node` with `f`, keeping a projection's
/// output names exactly (the nodes above refer to them by name, and a
/// rewritten expression would otherwise be renamed after itself).
pub(crate) fn map_expressions_keeping_names(
    node: LogicalPlan,
    f: impl FnMut(Expr) -> Result<Transformed<Expr>>,
) -> Result<Transformed<LogicalPlan>> {
    let schema = node.schema().clone();
    match node.map_expressions(f)? {
        Transformed {
            data: LogicalPlan::Projection(p),
            transformed: true,
            tnr,
        } => Ok(Transformed::new(
            LogicalPlan::Projection(Projection::try_new_with_schema(p.expr, p.input, schema)?),
            true,
            tnr,
        )),
        other => Ok(other),
    }
}

/// The first scalar subquery in `e` that reads outer columns.
fn find_correlated(e: &Expr) -> Option<Subquery> {
    let mut found = None;
    let _ = e.apply(|x| {
        if let Expr::ScalarSubquery(s) = x
            && !s.outer_ref_columns.is_empty()
            && found.is_none()
        {
            found = Some(s.clone());
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// Left-join the decorrelated subquery onto `input`; returns the join and
/// the expression that replaces the subquery.
fn join_subquery(
    input: LogicalPlan,
    sub: &Subquery,
    counter: &mut usize,
) -> Result<Option<(LogicalPlan, Expr)>> {
    // Recognize Projection(value) <- Aggregate(no GROUP BY) <- rest.
    let LogicalPlan::Projection(proj) = sub.subquery.as_ref() else {
        return Ok(None);
    };
    let LogicalPlan::Aggregate(agg) = proj.input.as_ref() else {
        return Ok(None);
    };
    if !agg.group_expr.is_empty() || proj.expr.len() != 1 {
        return Ok(None);
    }
    // The outer columns the subquery reads, and the predicates that read them.
    let outer: Vec<Column> = sub
        .outer_ref_columns
        .iter()
        .filter_map(|e| match e {
            Expr::OuterReferenceColumn(_, c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    if outer.is_empty() {
        return Ok(None);
    }
    *counter += 1;
    let dom = format!("__dom_{counter}");
    let alias = format!("__sq_{counter}");
    let dom_cols: Vec<String> = (0..outer.len()).map(|i| format!("d{i}")).collect();
    let mut pulled: Vec<Expr> = Vec::new();
    let rest = agg.input.as_ref().clone().transform_up(|n| match n {
        LogicalPlan::Filter(f) if has_outer(&f.predicate) => {
            let (with, without): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&f.predicate)
                .into_iter()
                .partition(|p| has_outer(p));
            pulled.extend(with.into_iter().cloned());
            match conjunction(without.into_iter().cloned()) {
                Some(p) => Ok(Transformed::yes(
                    LogicalPlanBuilder::from(Arc::unwrap_or_clone(f.input))
                        .filter(p)?
                        .build()?,
                )),
                None => Ok(Transformed::yes(Arc::unwrap_or_clone(f.input))),
            }
        }
        n => Ok(Transformed::no(n)),
    })?;
    if rest.data.exists(|n| Ok(n.expressions().iter().any(has_outer)))? {
        return Ok(None);
    }
    let to_dom = |e: Expr| -> Result<Expr> {
        e.transform_up(|x| match &x {
            Expr::OuterReferenceColumn(_, c) => {
                let i = outer.iter().position(|o| o == c).unwrap_or(0);
                Ok(Transformed::yes(col(Column::new(
                    Some(dom.as_str()),
                    dom_cols[i].as_str(),
                ))))
            }
            _ => Ok(Transformed::no(x)),
        })
        .map(|t| t.data)
    };
    let predicate = match conjunction(pulled) {
        Some(p) => to_dom(p)?,
        None => return Ok(None),
    };
    // The domain: distinct values of the outer columns.
    let domain = LogicalPlanBuilder::from(input.clone())
        .project(outer.iter().zip(&dom_cols).map(|(c, d)| col(c.clone()).alias(d)))?
        .distinct()?
        .alias(dom.as_str())?
        .build()?;
    let group: Vec<Expr> = dom_cols
        .iter()
        .map(|d| col(Column::new(Some(dom.as_str()), d.as_str())))
        .collect();
    let value_name = "v";
    let mut outputs = group.clone();
    outputs.push(proj.expr[0].clone().unalias().alias(value_name));
    let Ok(decorrelated) = LogicalPlanBuilder::from(domain)
        .cross_join(rest.data)?
        .filter(predicate)?
        .aggregate(group.clone(), agg.aggr_expr.clone())
        .and_then(|b| b.project(outputs))
        .and_then(|b| b.alias(alias.as_str()))
        .and_then(|b| b.build())
    else {
        return Ok(None);
    };
    let right_keys: Vec<Column> = dom_cols
        .iter()
        .map(|d| Column::new(Some(alias.as_str()), d.as_str()))
        .collect();
    let joined = LogicalPlanBuilder::from(input)
        .join_detailed(
            decorrelated,
            JoinType::Left,
            (outer.clone(), right_keys),
            None,
            NullEquality::NullEqualsNull,
        )?
        .build()?;
    let value = col(Column::new(Some(alias.as_str()), value_name));
    // count(...) over no rows is 0, not NULL.
    let is_count = agg.aggr_expr.len() == 1
        && matches!(agg.aggr_expr[0].clone().unalias(), Expr::AggregateFunction(ref f) if f.func.name() == "count")
        && matches!(proj.expr[0].clone().unalias(), Expr::Column(_));
    let value = if is_count {
        Expr::ScalarFunction(ScalarFunction::new_udf(
            datafusion::functions::core::coalesce(),
            vec![value, lit(0i64)],
        ))
    } else {
        value
    };
    Ok(Some((joined, value)))
}

fn has_outer(e: &Expr) -> bool {
    e.exists(|x| Ok(matches!(x, Expr::OuterReferenceColumn(..))))
        .unwrap_or(false)
}
