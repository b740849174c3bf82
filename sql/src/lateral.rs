//! `LATERAL (... ORDER BY ... LIMIT k)`: top-k per outer row.
//!
//! DataFusion decorrelates lateral joins whose subquery aggregates, but not
//! the top-k idiom `FROM a, LATERAL (SELECT ... FROM b WHERE b.k = a.k
//! ORDER BY ... LIMIT k)`. When the correlation is a conjunction of
//! equalities, the subquery's answer depends on the outer row only through
//! those keys, so it is the same as ranking the inner rows per key with
//! `row_number() OVER (PARTITION BY keys ORDER BY ...)`, keeping ranks in
//! `(offset, offset + k]`, and joining on the keys. This module rewrites
//! exactly that shape and leaves every other plan unchanged.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprFunctionExt, JoinType, Limit, LogicalPlan, LogicalPlanBuilder, Operator, Sort,
    SortExpr, col, lit,
};

/// Rewrite `node` if it is a lateral join onto a correlated top-k.
pub fn rewrite(node: LogicalPlan, counter: &mut usize) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Join(join) = &node else {
        return Ok(Transformed::no(node));
    };
    let trivially_true = match &join.filter {
        None => true,
        Some(Expr::Literal(v, _)) => v == &datafusion::common::ScalarValue::Boolean(Some(true)),
        Some(_) => false,
    };
    if !matches!(join.join_type, JoinType::Inner | JoinType::Left) || !join.on.is_empty() || !trivially_true {
        return Ok(Transformed::no(node));
    }
    let LogicalPlan::SubqueryAlias(alias) = join.right.as_ref() else {
        return Ok(Transformed::no(node));
    };
    let LogicalPlan::Subquery(sub) = alias.input.as_ref() else {
        return Ok(Transformed::no(node));
    };
    let Some(topk) = TopK::recognize(&sub.subquery) else {
        return Ok(Transformed::no(node));
    };
    *counter += 1;
    let n = *counter;
    let key = |i: usize| format!("__lateral{n}_k{i}");
    let rank = format!("__lateral{n}_rn");

    // The inner rows, with the inner side of each correlated equality.
    let mut projection = topk.projection.clone();
    projection.extend(
        topk.inner_keys
            .iter()
            .enumerate()
            .map(|(i, e)| e.clone().alias(key(i))),
    );
    let mut inner = LogicalPlanBuilder::from(topk.input.clone());
    if let Some(p) = conjunction(topk.residual.clone()) {
        inner = inner.filter(p)?;
    }
    let partition: Vec<Expr> = (0..topk.inner_keys.len()).map(|i| col(key(i))).collect();
    let rn = row_number()
        .partition_by(partition)
        .order_by(topk.order.clone())
        .build()?
        .alias(&rank);
    let mut keep = col(&rank).gt(lit(topk.skip as u64));
    if let Some(fetch) = topk.fetch {
        keep = keep.and(col(&rank).lt_eq(lit((topk.skip + fetch) as u64)));
    }
    let mut kept: Vec<Expr> = topk.output.clone().unwrap_or_else(|| sub_columns(&sub.subquery));
    kept.extend((0..topk.inner_keys.len()).map(|i| col(key(i))));
    let ranked = inner
        .project(projection)?
        .window(vec![rn])?
        .filter(keep)?
        .project(kept)?
        .alias(alias.alias.clone())?
        .build()?;
    let on: Vec<Expr> = topk
        .outer_keys
        .iter()
        .enumerate()
        .map(|(i, outer)| {
            Expr::Column(outer.clone()).eq(Expr::Column(Column::new(Some(alias.alias.clone()), key(i))))
        })
        .collect();
    let output: Vec<Expr> = node.schema().columns().into_iter().map(Expr::Column).collect();
    let joined = LogicalPlanBuilder::from(join.left.as_ref().clone())
        .join_on(ranked, join.join_type, on)?
        .project(output)?
        .build()?;
    Ok(Transformed::yes(joined))
}

/// The output columns of the subquery, bound to its own schema.
fn sub_columns(plan: &LogicalPlan) -> Vec<Expr> {
    plan.schema().columns().into_iter().map(Expr::Column).collect()
}

/// `Sort(fetch) / Limit(Sort)` over an optional `Projection` over a
/// `Filter` whose outer references are all `inner = outer` conjuncts.
struct TopK {
    input: LogicalPlan,
    residual: Vec<Expr>,
    inner_keys: Vec<Expr>,
    outer_keys: Vec<Column>,
    projection: Vec<Expr>,
    order: Vec<SortExpr>,
    skip: usize,
    fetch: Option<usize>,
    /// A projection above the sort (when the order reads columns the
    /// subquery does not output).
    output: Option<Vec<Expr>>,
}

impl TopK {
    /// `[Limit] [Projection] Sort [Projection] Filter`, with a limit on the
    /// sort or above it.
    fn recognize(plan: &LogicalPlan) -> Option<TopK> {
        use datafusion::logical_expr::{FetchType, SkipType};
        let mut plan = plan;
        let mut limit = None;
        if let LogicalPlan::Limit(l @ Limit { input, .. }) = plan {
            let SkipType::Literal(skip) = l.get_skip_type().ok()? else {
                return None;
            };
            let fetch = match l.get_fetch_type().ok()? {
                FetchType::Literal(f) => f,
                FetchType::UnsupportedExpr => return None,
            };
            limit = Some((skip, fetch));
            plan = input.as_ref();
        }
        let mut output = None;
        if let LogicalPlan::Projection(p) = plan
            && matches!(p.input.as_ref(), LogicalPlan::Sort(_))
        {
            if p.expr.iter().any(has_outer) {
                return None;
            }
            output = Some(p.expr.clone());
            plan = p.input.as_ref();
        }
        let LogicalPlan::Sort(sort @ Sort { .. }) = plan else {
            return None;
        };
        let (skip, fetch) = match (limit, sort.fetch) {
            (Some(l), _) => l,
            (None, Some(f)) => (0, Some(f)),
            (None, None) => return None,
        };
        if sort.expr.iter().any(|s| has_outer(&s.expr)) {
            return None;
        }
        let (projection, below) = match sort.input.as_ref() {
            LogicalPlan::Projection(p) => {
                if p.expr.iter().any(has_outer) {
                    return None;
                }
                (p.expr.clone(), p.input.as_ref())
            }
            other => (sub_columns(other), other),
        };
        let LogicalPlan::Filter(filter) = below else {
            return None;
        };
        let mut residual = Vec::new();
        let mut inner_keys = Vec::new();
        let mut outer_keys = Vec::new();
        for c in split_conjunction(&filter.predicate) {
            if !has_outer(c) {
                residual.push(c.clone());
                continue;
            }
            let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = c
            else {
                return None;
            };
            let (inner, outer) = match (left.as_ref(), right.as_ref()) {
                (Expr::OuterReferenceColumn(_, o), i) | (i, Expr::OuterReferenceColumn(_, o))
                    if !has_outer(i) =>
                {
                    (i.clone(), o.clone())
                }
                _ => return None,
            };
            inner_keys.push(inner);
            outer_keys.push(outer);
        }
        if inner_keys.is_empty() {
            return None;
        }
        Some(TopK {
            input: Arc::unwrap_or_clone(filter.input.clone()),
            residual,
            inner_keys,
            outer_keys,
            projection,
            order: sort.expr.clone(),
            skip,
            fetch,
            output,
        })
    }
}

fn has_outer(e: &Expr) -> bool {
    e.contains_outer()
}
