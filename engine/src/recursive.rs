//! `WITH RECURSIVE`: a fixpoint maintained with differential's `iterate`.
//!
//! The view `name = base ∪ step(name)` becomes a loop variable in a nested
//! scope whose timestamps carry an iteration counter. Only the part of
//! `step` that reads `name` is rendered inside the loop; every subtree that
//! does not is rendered once outside and entered, so aggregates and the
//! like there cost nothing per iteration. A loop that has not converged
//! after [`RECURSION_LIMIT`] iterations (a `UNION ALL` over a cycle, or a
//! counter without a bound) stops and puts the view into an error, rather
//! than spinning the worker forever.

use differential_dataflow::AsCollection;
use differential_dataflow::operators::iterate::Variable;
use timely::dataflow::Scope;
use timely::dataflow::operators::OkErr;
use timely::order::Product;
use weir_sql::{Plan, PlanNode};

use crate::render::{
    Coll, Errs, Imports, JoinSpec, RenderTime, empty, join_collections, map_filter_project, render, union_all,
};
use crate::{EngineError, Time};

/// Iterations after which a recursive view gives up with an error.
pub const RECURSION_LIMIT: u64 = 10_000;

type Inner = Product<Time, u64>;

pub(crate) fn render_recursive<'s>(
    name: &str,
    base: &Plan,
    step: &Plan,
    distinct: bool,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let (base_ok, base_err) = render(base, scope, imports)?;
    let mut outside = Vec::new();
    render_independent(step, name, scope, imports, &mut outside)?;
    scope.scoped::<Inner, _, _>(&format!("WITH RECURSIVE {name}"), |inner| {
        let entered: Vec<(Coll<'_, Inner>, Errs<'_, Inner>)> = outside
            .into_iter()
            .map(|(ok, err)| (ok.enter(inner), err.enter(inner)))
            .collect();
        let start = base_ok.clone().enter(inner);
        let (variable, current) = Variable::new_from(start.clone(), Product::new(Default::default(), 1));
        let mut next = 0;
        let (step_ok, step_err) = render_dependent(step, name, &current, &entered, &mut next)?;
        let mut result = start.concat(step_ok);
        if distinct {
            result = crate::render::distinct(result, "Distinct");
        }
        let message = format!("WITH RECURSIVE {name} did not converge within {RECURSION_LIMIT} iterations");
        let (capped, overflow) = result.inner.ok_err(move |(row, t, d)| {
            if t.inner < RECURSION_LIMIT {
                Ok((row, t, d))
            } else {
                Err((message.clone(), t, 1))
            }
        });
        let capped = capped.as_collection();
        variable.set(capped.clone());
        let errs = step_err.concat(overflow.as_collection());
        Ok((capped.leave(scope), base_err.concat(errs.leave(scope))))
    })
}

/// Render, in the outer scope and in a fixed order, every maximal subtree of
/// `plan` that does not read `name`.
fn render_independent<'s>(
    plan: &Plan,
    name: &str,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
    out: &mut Vec<(Coll<'s>, Errs<'s>)>,
) -> Result<(), EngineError> {
    if !plan.reads_recursive(name) {
        out.push(render(plan, scope, imports)?);
        return Ok(());
    }
    for child in plan.children() {
        render_independent(child, name, scope, imports, out)?;
    }
    Ok(())
}

/// Render the part of `plan` that reads `name` inside the loop, taking the
/// independent subtrees, in [`render_independent`]'s order, from `entered`.
fn render_dependent<'s, T: RenderTime>(
    plan: &Plan,
    name: &str,
    current: &Coll<'s, T>,
    entered: &[(Coll<'s, T>, Errs<'s, T>)],
    next: &mut usize,
) -> Result<(Coll<'s, T>, Errs<'s, T>), EngineError> {
    if !plan.reads_recursive(name) {
        let pair = entered
            .get(*next)
            .cloned()
            .ok_or_else(|| EngineError::Expression("recursive plan out of step".into()))?;
        *next += 1;
        return Ok(pair);
    }
    let scope = current.inner.scope();
    match &plan.node {
        PlanNode::RecursiveRef { .. } => Ok((current.clone(), empty(scope))),
        PlanNode::MapFilterProject {
            input,
            filters,
            projection,
        } => {
            let (ok, err) = render_dependent(input, name, current, entered, next)?;
            let (ok, err2) = map_filter_project(ok, &input.schema, filters, projection, &plan.schema)?;
            Ok((ok, err.concat(err2)))
        }
        PlanNode::Distinct { input } => {
            let (ok, err) = render_dependent(input, name, current, entered, next)?;
            Ok((crate::render::distinct(ok, "Distinct"), err))
        }
        PlanNode::Union { inputs } => {
            let parts = inputs
                .iter()
                .map(|i| render_dependent(i, name, current, entered, next))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(union_all(scope, parts))
        }
        PlanNode::Join { left, right, .. } => {
            let l = render_dependent(left, name, current, entered, next)?;
            let r = render_dependent(right, name, current, entered, next)?;
            let spec = JoinSpec::of(&plan.node).expect("a join node");
            join_collections(l, r, &left.schema, &right.schema, &spec)
        }
        other => Err(EngineError::Expression(format!(
            "{} in the recursive term of WITH RECURSIVE {name}",
            match other {
                PlanNode::Reduce { .. } => "aggregates",
                PlanNode::TopK { .. } => "ORDER BY ... LIMIT",
                PlanNode::Window { .. } => "window functions",
                _ => "nested recursion",
            }
        ))),
    }
}
