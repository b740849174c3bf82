//! The rows that hold their group's maximum (or minimum), written as a join
//! of a relation with its own per-group extreme:
//!
//! ```sql
//! SELECT r.* FROM r JOIN (SELECT g, max(c) AS m FROM r GROUP BY g) x
//!   ON r.g = x.g AND r.c >= x.m
//! ```
//!
//! (Nexmark q5's hot items). Joined on the group alone, every change of a
//! group's maximum re-joins every row of the group, and every group lives on
//! one worker. Within its group no row's `c` exceeds the maximum, so
//! `r.c >= x.m` holds exactly when `r.c = x.m`: this module adds that
//! equality to the join's keys, so a change of the maximum touches only the
//! rows holding the old and the new one. The comparison stays as the
//! residual. It runs after DataFusion's optimizer, over the plan that will
//! become a dataflow, and changes no answer: it only adds a key where the
//! rows on both sides are provably the same relation (the same plan node
//! reached through column-only projections and aliases).

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, NullEquality, Result};
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

/// Add `row.c = extreme` keys to every join of a relation with its own
/// per-group maximum or minimum compared by `>=` / `<=`.
pub fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Join(join) = &node else {
            return Ok(Transformed::no(node));
        };
        // The key changes no pair's match, so any join type keeps its
        // answer, except where NULL keys match or decide (a NULL extreme
        // would then count).
        if join.null_aware || join.null_equality != NullEquality::NullEqualsNothing {
            return Ok(Transformed::no(node));
        }
        let Some(filter) = &join.filter else {
            return Ok(Transformed::no(node));
        };
        let mut keys = Vec::new();
        for conjunct in split_conjunction(filter) {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
                continue;
            };
            let (Expr::Column(a), Expr::Column(b)) = (left.as_ref(), right.as_ref()) else {
                continue;
            };
            // `a >= b`: `b` may be the maximum over `a`'s group, or `a` the
            // minimum over `b`'s.
            let candidates = match op {
                Operator::GtEq => [(a, b, "max"), (b, a, "min")],
                Operator::LtEq => [(a, b, "min"), (b, a, "max")],
                _ => continue,
            };
            for (row, extreme, func) in candidates {
                if let Some(key) = extreme_key(join, row, extreme, func)
                    && !join.on.contains(&key)
                {
                    keys.push(key);
                    break;
                }
            }
        }
        if keys.is_empty() {
            return Ok(Transformed::no(node));
        }
        let mut join = join.clone();
        join.on.extend(keys);
        Ok(Transformed::yes(LogicalPlan::Join(join)))
    })
    .map(|t| t.data)
}

/// Which side of a join a column belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

/// The `(left, right)` key pair `row = extreme`, where `extreme` is
/// `func(c)` of an aggregate over the very relation `row` is read from, with
/// `row` its `c` and every group key of that aggregate joined to the same
/// column of `row`'s side.
fn extreme_key(
    join: &datafusion::logical_expr::Join,
    row: &Column,
    extreme: &Column,
    func: &str,
) -> Option<(Expr, Expr)> {
    let (row_side, row_index) = side_of(join, row)?;
    let (extreme_side, extreme_index) = side_of(join, extreme)?;
    if row_side == extreme_side {
        return None;
    }
    let plan_of = |side| match side {
        Side::Left => join.left.as_ref(),
        Side::Right => join.right.as_ref(),
    };
    let (row_plan, extreme_plan) = (plan_of(row_side), plan_of(extreme_side));
    if row_plan.schema().field(row_index).data_type()
        != extreme_plan.schema().field(extreme_index).data_type()
    {
        return None;
    }
    let (LogicalPlan::Aggregate(aggregate), output) = trace(extreme_plan, extreme_index) else {
        return None;
    };
    let n_keys = aggregate.group_expr.len();
    let argument = unalias(aggregate.aggr_expr.get(output.checked_sub(n_keys)?)?);
    let Expr::AggregateFunction(AggregateFunction { func: f, params }) = argument else {
        return None;
    };
    if f.name() != func || params.filter.is_some() || params.args.len() != 1 {
        return None;
    }
    let input = aggregate.input.as_ref();
    // The relation both sides read, and the aggregated column's place in it.
    let (base, value) = trace_column(input, &params.args[0])?;
    let (row_base, row_value) = trace(row_plan, row_index);
    if value != row_value || !same_relation(base, row_base) {
        return None;
    }
    // Every group key must be joined to the same column on the row's side,
    // or a row could meet another group's extreme.
    for (i, group) in aggregate.group_expr.iter().enumerate() {
        let (group_base, group_column) = trace_column(input, group)?;
        if !same_relation(group_base, base) {
            return None;
        }
        let joined = join.on.iter().any(|(l, r)| {
            let (row_key, extreme_key) = match row_side {
                Side::Left => (l, r),
                Side::Right => (r, l),
            };
            let (Expr::Column(row_key), Expr::Column(extreme_key)) = (row_key, extreme_key) else {
                return false;
            };
            let ends = |c: &Column, side, plan| side_of(join, c).filter(|(s, _)| *s == side).map(|(_, i)| trace(plan, i));
            matches!(ends(row_key, row_side, row_plan), Some((b, c)) if c == group_column && same_relation(b, base))
                && matches!(ends(extreme_key, extreme_side, extreme_plan), Some((LogicalPlan::Aggregate(a), c)) if c == i && std::ptr::eq(a, aggregate))
        });
        if !joined {
            return None;
        }
    }
    let (row, extreme) = (Expr::Column(row.clone()), Expr::Column(extreme.clone()));
    Some(match row_side {
        Side::Left => (row, extreme),
        Side::Right => (extreme, row),
    })
}

/// The side of `join` a column comes from, and its index in that side.
fn side_of(join: &datafusion::logical_expr::Join, column: &Column) -> Option<(Side, usize)> {
    let index = |schema: &DFSchema| schema.maybe_index_of_column(column);
    match (index(join.left.schema()), index(join.right.schema())) {
        (Some(i), None) => Some((Side::Left, i)),
        (None, Some(i)) => Some((Side::Right, i)),
        _ => None,
    }
}

/// Follow output column `index` of `plan` down through aliases and
/// column-only projections (which change neither rows nor values) to the
/// node that computes it, and its index there.
fn trace(mut plan: &LogicalPlan, mut index: usize) -> (&LogicalPlan, usize) {
    loop {
        match plan {
            LogicalPlan::SubqueryAlias(a) => plan = a.input.as_ref(),
            LogicalPlan::Projection(p) => {
                let Expr::Column(column) = unalias(&p.expr[index]) else {
                    return (plan, index);
                };
                let Some(i) = p.input.schema().maybe_index_of_column(column) else {
                    return (plan, index);
                };
                plan = p.input.as_ref();
                index = i;
            }
            // A scan's projection only picks columns: trace to the table's own.
            LogicalPlan::TableScan(s) if s.filters.is_empty() && s.fetch.is_none() => {
                return (plan, s.projection.as_ref().map_or(index, |p| p[index]));
            }
            _ => return (plan, index),
        }
    }
}

/// `trace` for an expression over `plan`'s output, which must be a column.
fn trace_column<'a>(plan: &'a LogicalPlan, e: &Expr) -> Option<(&'a LogicalPlan, usize)> {
    let Expr::Column(c) = unalias(e) else { return None };
    Some(trace(plan, plan.schema().maybe_index_of_column(c)?))
}

/// Whether two traced nodes produce the same rows: the same node, equal
/// plans, or scans of the same table (whatever columns each picks).
fn same_relation(a: &LogicalPlan, b: &LogicalPlan) -> bool {
    match (a, b) {
        (LogicalPlan::TableScan(x), LogicalPlan::TableScan(y)) => {
            x.table_name == y.table_name
                && x.filters.is_empty()
                && y.filters.is_empty()
                && x.fetch.is_none()
                && y.fetch.is_none()
        }
        _ => std::ptr::eq(a, b) || a == b,
    }
}

/// `e` without its aliases (a projection may name a column twice over).
fn unalias(mut e: &Expr) -> &Expr {
    while let Expr::Alias(Alias { expr, .. }) = e {
        e = expr.as_ref();
    }
    e
}
