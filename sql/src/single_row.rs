//! Correlated scalar subqueries that do not aggregate.
//!
//! `(SELECT floor FROM dept WHERE name = emp.dept)` is legal SQL: it yields
//! the one matching value, NULL when nothing matches, and fails with 21000
//! when several rows match. DataFusion only decorrelates subqueries that
//! aggregate, so this module rewrites the subquery to aggregate:
//! `weir_single_row(count(*), max(floor))`, where `weir_single_row` returns
//! its second argument and raises the cardinality error when the count
//! exceeds one. The maximum of a single value is that value, so the answer
//! is exactly SQL's; and the error, raised per row, lands in the view's
//! error collection like any other evaluation error.

use std::sync::Arc;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, exec_err};
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Subquery, Volatility, lit,
};

/// The message PostgreSQL gives for a scalar subquery with several rows.
pub const MORE_THAN_ONE_ROW: &str = "more than one row returned by a subquery used as an expression";

/// `weir_single_row(n, v)`: `v`, or an error when `n > 1`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SingleRow {
    signature: Signature,
}

impl SingleRow {
    pub fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(SingleRow {
            signature: Signature::any(2, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for SingleRow {
    fn name(&self) -> &str {
        "weir_single_row"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[1].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let counts = args.args[0].to_array(args.number_rows)?;
        let counts = arrow::compute::cast(&counts, &DataType::Int64)?;
        let counts = counts
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64 gives Int64Array");
        if counts.iter().any(|n| n.is_some_and(|n| n > 1)) {
            return exec_err!("{MORE_THAN_ONE_ROW}");
        }
        Ok(args.args[1].clone())
    }
}

/// Rewrite every correlated scalar subquery in `plan` that does not
/// aggregate into one that does.
pub fn aggregate_scalar_subqueries(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        crate::decorrelate::map_expressions_keeping_names(node, |e| {
            e.transform_up(|x| match x {
                Expr::ScalarSubquery(sub) if needs_rewrite(&sub) => {
                    Ok(Transformed::yes(Expr::ScalarSubquery(aggregated(sub)?)))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    })
    .map(|t| t.data)
}

fn needs_rewrite(sub: &Subquery) -> bool {
    if sub.outer_ref_columns.is_empty() || sub.subquery.schema().fields().len() != 1 {
        return false;
    }
    let mut plan = sub.subquery.as_ref();
    loop {
        match plan {
            LogicalPlan::Projection(p) => plan = &p.input,
            LogicalPlan::SubqueryAlias(a) => plan = &a.input,
            LogicalPlan::Sort(s) if s.fetch.is_none() => plan = &s.input,
            LogicalPlan::Aggregate(_) | LogicalPlan::Limit(_) | LogicalPlan::Sort(_) => return false,
            _ => return true,
        }
    }
}

fn aggregated(sub: Subquery) -> Result<Subquery> {
    let name = sub.subquery.schema().field(0).name().clone();
    // Aggregate below the projection, so the correlated filter underneath
    // can still see the columns it compares (DataFusion pulls it up
    // through the aggregate into the join).
    let (input, value) = match sub.subquery.as_ref() {
        LogicalPlan::Projection(p) => (p.input.as_ref().clone(), p.expr[0].clone().unalias()),
        other => {
            let field = other.schema().qualified_field(0);
            (other.clone(), Expr::Column(field.into()))
        }
    };
    let plan = LogicalPlanBuilder::from(input)
        .aggregate(
            Vec::<Expr>::new(),
            vec![count(lit(1)).alias("__weir_n"), max(value).alias("__weir_v")],
        )?
        .project(vec![
            SingleRow::udf()
                .call(vec![
                    datafusion::logical_expr::col("__weir_n"),
                    datafusion::logical_expr::col("__weir_v"),
                ])
                .alias(name),
        ])?
        .build()?;
    Ok(Subquery {
        subquery: Arc::new(plan),
        ..sub
    })
}
