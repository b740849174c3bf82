//! Which columns of a plan only ever rise, row by row.
//!
//! A count (or a `max`) grouped over rows that are only inserted never
//! falls, and its group never vanishes: each change takes the group's row
//! back only to put it again with a greater value. The `max` of such a
//! column, grouped by anything its row's group determines, is then the
//! greatest value ever inserted into the group, and a retraction can be
//! ignored: its value is below the one that replaces it. Nexmark q5's
//! "auctions with the most bids per window" is this shape.
//!
//! This module only reads plans; [`crate::render`] decides what to build
//! from what it finds, and [`crate::minmax`] builds the running maximum.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use weir_sql::{AggregateExpr, AggregateFunc, GlobalId, Plan, PlanNode};

use crate::eval::column_index;
use crate::log::TableLog;
use crate::render::monotonic;

/// What is known of each output column of a plan whose rows only rise.
/// A row's identity is its group in the reduction that made it.
#[derive(Debug, Clone, PartialEq)]
struct Growth {
    /// The column is a function of the row's identity.
    identity: Vec<bool>,
    /// The column's value, for one identity, never falls (NULL lowest).
    rising: Vec<bool>,
}

/// Whether a reduction of `input` by `group_keys` may keep each `max` as
/// the greatest value ever inserted, ignoring retractions: every aggregate
/// is a `max` of a rising column of `input`, and every group key depends
/// only on the identity of `input`'s rows, so a row never leaves its group.
pub fn max_of_rising(
    input: &Plan,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>,
) -> bool {
    if aggregates.is_empty() || aggregates.iter().any(|a| a.func != AggregateFunc::Max) {
        return false;
    }
    let Some(growth) = growth(input, logs) else {
        return false;
    };
    let column_rises = |e: &Expr| column_index(e, &input.schema).is_some_and(|i| growth.rising[i]);
    aggregates
        .iter()
        .all(|a| a.argument().as_ref().is_some_and(column_rises))
        && group_keys
            .iter()
            .all(|k| of_identity(k, &input.schema, &growth.identity))
}

fn growth(plan: &Plan, logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>) -> Option<Growth> {
    match &plan.node {
        PlanNode::Reduce {
            input,
            group_keys,
            aggregates,
        } if monotonic(input, logs) => {
            let keys = group_keys.len();
            let rising: Vec<bool> = std::iter::repeat_n(false, keys)
                .chain(aggregates.iter().map(|a| {
                    matches!(
                        a.func,
                        AggregateFunc::CountStar | AggregateFunc::Count | AggregateFunc::Max
                    )
                }))
                .collect();
            let identity = (0..rising.len()).map(|i| i < keys).collect();
            rising.contains(&true).then_some(Growth { identity, rising })
        }
        PlanNode::MapFilterProject {
            input,
            filters,
            projection,
        } => {
            let inner = growth(input, logs)?;
            // A filter on the identity keeps or drops a row for good; one
            // on a rising value could drop it later.
            if !filters
                .iter()
                .all(|f| of_identity(f, &input.schema, &inner.identity))
            {
                return None;
            }
            let mut outer = Growth {
                identity: Vec::with_capacity(projection.len()),
                rising: Vec::with_capacity(projection.len()),
            };
            for e in projection {
                let column = column_index(e, &input.schema);
                outer
                    .identity
                    .push(of_identity(e, &input.schema, &inner.identity));
                outer.rising.push(column.is_some_and(|i| inner.rising[i]));
            }
            outer.rising.contains(&true).then_some(outer)
        }
        _ => None,
    }
}

/// Whether `e` reads only columns that are functions of the row's identity.
fn of_identity(e: &Expr, schema: &DFSchema, identity: &[bool]) -> bool {
    !e.is_volatile()
        && e.column_refs()
            .iter()
            .all(|c| schema.index_of_column(c).is_ok_and(|i| identity[i]))
}
