//! `INTERSECT ALL` and `EXCEPT ALL` with SQL's multiplicities.
//!
//! DataFusion plans `A INTERSECT ALL B` as a semi join and `A EXCEPT ALL B`
//! as an anti join (NULLs equal), which keeps every copy of a row of `A`
//! that has any match: three copies of `1` in `A` and one in `B` give three
//! rows, where SQL gives `min(3, 1) = 1` (and `max(3 - 1, 0) = 2` for
//! `EXCEPT ALL`). Numbering the copies of each distinct row on both sides
//! (`row_number() OVER (PARTITION BY every column)`) and joining on the
//! number as well gives exactly SQL's counts, for the one-shot executor
//! and for dataflows alike. Plans with a distinct left input (plain
//! `INTERSECT`/`EXCEPT`) are already right and are left alone.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{NullEquality, Result};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, Join, JoinType, LogicalPlan, LogicalPlanBuilder, col};

/// Rewrite every `INTERSECT ALL` / `EXCEPT ALL` join in `plan`.
pub fn number_duplicates(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Join(j) if is_all_set_operation(&j) => Ok(Transformed::yes(numbered(j)?)),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

fn is_all_set_operation(j: &Join) -> bool {
    matches!(j.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
        && j.null_equality == NullEquality::NullEqualsNull
        && j.filter.is_none()
        && j.on.len() == j.left.schema().fields().len()
        && !matches!(j.left.as_ref(), LogicalPlan::Distinct(_))
}

fn numbered(j: Join) -> Result<LogicalPlan> {
    let left_columns: Vec<Expr> = j.left.schema().columns().into_iter().map(Expr::Column).collect();
    let number = |plan: Arc<LogicalPlan>, name: &str| -> Result<LogicalPlan> {
        let partition: Vec<Expr> = plan.schema().columns().into_iter().map(Expr::Column).collect();
        let rn = row_number().partition_by(partition).build()?.alias(name);
        LogicalPlanBuilder::from(Arc::unwrap_or_clone(plan))
            .window(vec![rn])?
            .build()
    };
    let left = number(j.left, "__weir_copy_l")?;
    let right = number(j.right, "__weir_copy_r")?;
    let mut on = j.on;
    on.push((col("__weir_copy_l"), col("__weir_copy_r")));
    let join = Join::try_new(
        Arc::new(left),
        Arc::new(right),
        on,
        None,
        j.join_type,
        j.join_constraint,
        j.null_equality,
        j.null_aware,
    )?;
    LogicalPlanBuilder::from(LogicalPlan::Join(join))
        .project(left_columns)?
        .build()
}
