//! Expressions over one side of a join with constant rows, computed before
//! the join.
//!
//! `FROM bid b, (VALUES ...) k(back)` pairs each row with every constant
//! row (Nexmark q5 puts each bid in its five hopping windows this way), and
//! a projection above it such as `date_bin('2 s', b.date_time) - k.back`
//! evaluates `date_bin` once per pair. This pass, run on the plan IR as a
//! `MapFilterProject` over such a join is lowered, moves every largest
//! subexpression that reads only the non-constant side below the join, so
//! it is computed once per row; the engine then also finds rows that became
//! equal (bids of one auction in one 2-second slice) and pairs them once,
//! with their multiplicity. It changes no answer and raises no error that
//! was not raised before: only projections without filters are rewritten,
//! over at least one constant row; a moved expression is deterministic and
//! sees the row it saw above the join; and none is taken from under a
//! `CASE`, `AND`, `OR` or a function that may skip an argument, which could
//! have left it unevaluated.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::Field;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::logical_expr::{Expr, ExprSchemable, Operator};

use crate::lower::{fuse, identity};
use crate::plan::{JoinKind, Plan, PlanNode};

/// Rewrite a projection over `input` (a keyless inner join, without a
/// residual, of a plan with constant rows) so that the subexpressions
/// reading only the plan's side are computed below the join: the new join
/// and the projection over it. `None` where `input` is not that shape or
/// nothing moves.
pub fn push_below_constant_join(input: &Plan, projection: &[Expr]) -> Option<(Plan, Vec<Expr>)> {
    let PlanNode::Join {
        left,
        right,
        left_keys,
        residual: None,
        kind: JoinKind::Inner,
        nulls_equal,
        ..
    } = &input.node
    else {
        return None;
    };
    if !left_keys.is_empty() {
        return None;
    }
    let constant_left = match (&left.node, &right.node) {
        (_, PlanNode::Constant { batch }) if batch.num_rows() > 0 => false,
        (PlanNode::Constant { batch }, _) if batch.num_rows() > 0 => true,
        _ => return None,
    };
    let (constant, other) = if constant_left {
        (left, right)
    } else {
        (right, left)
    };

    let reads_only_other = |e: &Expr| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| other.schema.index_of_column(c).is_ok())
    };
    let mut moved: Vec<Expr> = Vec::new();
    for e in projection {
        e.apply(|x| {
            if matches!(x, Expr::Column(_)) {
                return Ok(TreeNodeRecursion::Jump);
            }
            if reads_only_other(x) && !x.is_volatile() {
                if !moved.contains(x) {
                    moved.push(x.clone());
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            Ok(if always_evaluates_children(x) {
                TreeNodeRecursion::Continue
            } else {
                TreeNodeRecursion::Jump
            })
        })
        .ok()?;
    }
    if moved.is_empty() {
        return None;
    }

    // Each moved expression becomes an unqualified column named after it.
    let names: Vec<String> = moved.iter().map(|e| e.schema_name().to_string()).collect();
    let replace = |e: &Expr| -> Option<Expr> {
        e.clone()
            .transform_down(|x| match moved.iter().position(|m| *m == x) {
                Some(i) => Ok(Transformed::new(
                    Expr::Column(Column::from_name(names[i].clone())),
                    true,
                    TreeNodeRecursion::Jump,
                )),
                None => Ok(Transformed::no(x)),
            })
            .ok()
            .map(|t| t.data)
    };
    let projection: Vec<Expr> = projection.iter().map(replace).collect::<Option<_>>()?;

    // The other side now yields the columns still read above the join,
    // then the moved expressions.
    let read: HashSet<&Column> = projection.iter().flat_map(|e| e.column_refs()).collect();
    let (mut kept, mut fields) = columns_read(&other.schema, &read);
    for (e, name) in moved.iter().zip(&names) {
        fields.push(named_field(e, &other.schema, name)?);
        kept.push(e.clone().alias(name));
    }
    let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default()).ok()?);
    let pushed = fuse(other.as_ref().clone(), Vec::new(), Some(kept), schema);

    let (l, r) = if constant_left {
        (constant.as_ref().clone(), pushed)
    } else {
        (pushed, constant.as_ref().clone())
    };
    let joined = Arc::new(l.schema.join(&r.schema).ok()?);
    let join = Plan {
        node: PlanNode::Join {
            left: Box::new(l),
            right: Box::new(r),
            left_keys: Vec::new(),
            right_keys: Vec::new(),
            residual: None,
            kind: JoinKind::Inner,
            nulls_equal: *nulls_equal,
        },
        schema: joined,
    };
    Some((join, projection))
}

/// Whether evaluating `e` evaluates each of its children on every row.
fn always_evaluates_children(e: &Expr) -> bool {
    match e {
        Expr::Case(_) => false,
        Expr::BinaryExpr(b) => !matches!(b.op, Operator::And | Operator::Or),
        Expr::ScalarFunction(f) => !f.func.short_circuits(),
        _ => true,
    }
}

/// A grouping directly over such a join (`GROUP BY date_bin(...) - k.back`
/// without a projection between): a projection of what the grouping reads
/// (the columns its aggregates read, and each key) goes between, and is
/// split as [`push_below_constant_join`] splits any projection. The
/// grouping's new input and keys (each computed key now a column named
/// after it); `None` where nothing moves.
pub fn group_below_constant_join(
    input: &Plan,
    group_keys: &[Expr],
    aggregates: &[Expr],
) -> Option<(Plan, Vec<Expr>)> {
    if group_keys.iter().all(|k| matches!(k, Expr::Column(_))) {
        return None;
    }
    let read: HashSet<&Column> = aggregates
        .iter()
        .chain(group_keys.iter().filter(|k| matches!(k, Expr::Column(_))))
        .flat_map(|e| e.column_refs())
        .collect();
    let (mut projection, mut fields) = columns_read(&input.schema, &read);
    let mut keys = Vec::new();
    for k in group_keys {
        if matches!(k, Expr::Column(_)) {
            keys.push(k.clone());
            continue;
        }
        let name = k.schema_name().to_string();
        fields.push(named_field(k, &input.schema, &name)?);
        projection.push(k.clone().alias(&name));
        keys.push(Expr::Column(Column::from_name(name)));
    }
    let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default()).ok()?);
    let (join, projection) = push_below_constant_join(input, &projection)?;
    Some((fuse(join, Vec::new(), Some(projection), schema), keys))
}

/// The columns of `schema` in `read`, in the schema's order, with their
/// qualified fields.
fn columns_read(schema: &DFSchema, read: &HashSet<&Column>) -> (Vec<Expr>, Vec<QualifiedField>) {
    identity(schema)
        .into_iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Expr::Column(col) if read.contains(col)))
        .map(|(i, c)| {
            let (q, f) = schema.qualified_field(i);
            (c, (q.cloned(), Arc::clone(f)))
        })
        .unzip()
}

/// `e`'s field over `schema`, unqualified and named `name`.
fn named_field(e: &Expr, schema: &DFSchema, name: &str) -> Option<QualifiedField> {
    let (_, f) = e.to_field(schema).ok()?;
    Some((None, Arc::new(f.as_ref().clone().with_name(name))))
}

type QualifiedField = (Option<TableReference>, Arc<Field>);
