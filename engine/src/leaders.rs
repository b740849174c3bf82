//! The rows that hold their group's running maximum, kept per group.
//!
//! `r JOIN (SELECT g, max(c) AS m FROM r GROUP BY g) x ON r.g = x.g AND
//! r.c >= x.m`, `r` a `count(*)` by groups that determine `g` (Nexmark
//! q5's hot items, planned as a semi join keyed by
//! the group and `r.c = x.m`, see `weir_sql::extreme_join`) keeps the rows
//! of `r` whose `c` is their group's greatest. Where `c` only rises row by
//! row and a row never leaves its group ([`crate::rising`]: a count over
//! inserts), every retraction of a row is replaced, at the same time, by
//! its group's row with a greater count. The maximum is then the
//! greatest value ever inserted, and the rows holding it are the rows
//! inserted with it since it was last exceeded: one small state per group
//! ([`Tied`]: the value and the rows holding it) answers the join, with no
//! arrangement of `r` (every row, every change) and none of the maxima.
//! The same join written as an inner join whose right columns are the
//! group and its maximum (a maximum over all rows is planned so) takes
//! them from the matching row, which holds them.
//!
//! This module owns recognising that join ([`of`]) and the state; the
//! per-key, per-time operator is [`crate::running`]'s, the key and value
//! bytes come out of each row by [`crate::eval::column_picker`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use differential_dataflow::AsCollection;
use differential_dataflow::difference::{IsZero, Semigroup};
use smallvec::SmallVec;
use timely::dataflow::Scope;
use weir_sql::{AggregateFunc, GlobalId, JoinKind, Plan, PlanNode};

use crate::eval::{column_index, own_picker};
use crate::log::TableLog;
use crate::render::{Coll, Errs, Imports, JoinSpec, MISMATCHED_ROW, batch_map, render};
use crate::row::Row;
use crate::running::{RunningState, derive_changes};
use crate::spans::Picker;
use crate::{Diff, EngineError, Time};

/// A group's greatest value so far, row-encoded alone so that bytes
/// compare as values do, and the rows inserted with it since, with their
/// multiplicities. No rows: no state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Tied {
    pub(crate) value: Row,
    /// Rows appended in the order they came; a row inserted twice is held
    /// twice (its multiplicities add up downstream).
    pub(crate) rows: SmallVec<[(Row, Diff); 1]>,
}

impl IsZero for Tied {
    fn is_zero(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Semigroup for Tied {
    fn plus_equals(&mut self, rhs: &Self) {
        self.plus_owned(rhs.clone());
    }
}

impl RunningState for Tied {
    const ABSORBS: bool = true;

    /// Rows below the maximum never join it.
    fn absorbs(&self, diff: &Self) -> bool {
        !self.rows.is_empty() && diff.value < self.value
    }

    fn plus_owned(&mut self, diff: Self) {
        if diff.rows.is_empty() {
            return;
        }
        if self.rows.is_empty() || diff.value > self.value {
            *self = diff;
        } else if diff.value == self.value {
            self.rows.extend(diff.rows);
        }
    }
}

/// A semi join of rows with their own per-group running maximum (see the
/// module comment): the rows' plan, and their group's and value's columns.
pub(crate) struct RunningLeaders<'a> {
    rows: &'a Plan,
    group: Vec<Expr>,
    value: Expr,
    /// For an inner join, the right side's columns (the group and its
    /// maximum) as columns of the left rows, which hold them when they
    /// match; `None` for a semi join.
    right: Option<Vec<Expr>>,
}

/// `plan`'s column `col`, followed down through projections that only
/// pick columns (no filters): the plan it comes from and its index there.
fn origin(mut plan: &Plan, mut col: usize) -> (&Plan, usize) {
    while let PlanNode::MapFilterProject {
        input,
        filters,
        projection,
    } = &plan.node
    {
        match projection.get(col).and_then(|e| column_index(e, &input.schema)) {
            Some(i) if filters.is_empty() => (plan, col) = (input, i),
            _ => break,
        }
    }
    (plan, col)
}

/// The join of `left` and `right` on `left_keys = right_keys` if it is a
/// semi join of rows with their own running per-group maximum, keyed by
/// the group and the maximum, whose residual (if any) compares the value
/// with the maximum.
pub(crate) fn of<'a>(
    left: &'a Plan,
    right: &'a Plan,
    spec: &JoinSpec<'_>,
    logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>,
) -> Option<RunningLeaders<'a>> {
    let (left_keys, right_keys, residual) = (spec.left_keys, spec.right_keys, spec.residual);
    let semi = match spec.kind {
        JoinKind::LeftSemi => true,
        JoinKind::Inner => false,
        _ => return None,
    };
    if spec.nulls_equal || left_keys.len() != right_keys.len() {
        return None;
    }
    // The right side: the maximum per group, its columns picked out.
    let (reduce, _) = origin(right, 0);
    let PlanNode::Reduce {
        input,
        group_keys,
        aggregates,
    } = &reduce.node
    else {
        return None;
    };
    if aggregates.len() != 1 || aggregates[0].func != AggregateFunc::Max {
        return None;
    }
    if !crate::rising::max_of_rising(input, group_keys, aggregates, logs) {
        return None;
    }
    let argument = aggregates[0].argument()?;
    // Each of the reduction's columns (group keys, then the maximum) as a
    // column of the plan below its input.
    let mut below: Vec<(&Plan, usize)> = group_keys
        .iter()
        .map(|k| column_index(k, &input.schema).map(|i| origin(input, i)))
        .collect::<Option<_>>()?;
    below.push(origin(input, column_index(&argument, &input.schema)?));
    // Each key pair: a left column and the reduction column it meets.
    let mut met = vec![None; below.len()];
    for (l, r) in left_keys.iter().zip(right_keys) {
        let (at, col) = origin(right, column_index(r, &right.schema)?);
        if !std::ptr::eq(at, reduce) {
            return None;
        }
        let l = column_index(l, &left.schema)?;
        if origin(left, l) != below[col] {
            return None;
        }
        met[col] = Some(l);
    }
    // Every group key and the maximum are met, by columns of the same
    // rows: those of a reduction whose one aggregate, the value, is a
    // `count(*)`, so that every change of a row raises its value (a
    // change that left it equal, of a column beside it or of a `count(x)`
    // over a NULL, would put back a row whose retraction was skipped).
    let met: Vec<usize> = met.into_iter().collect::<Option<_>>()?;
    let (rows, value_col) = *below.last()?;
    let PlanNode::Reduce {
        group_keys: row_keys,
        aggregates: row_aggregates,
        ..
    } = &rows.node
    else {
        return None;
    };
    let counts_rows = |a: &weir_sql::AggregateExpr| a.func == AggregateFunc::CountStar && a.filter.is_none();
    if row_aggregates.len() != 1
        || !counts_rows(&row_aggregates[0])
        || value_col != row_keys.len()
        || below.iter().any(|(p, _)| *p != rows)
    {
        return None;
    }
    let value = *met.last()?;
    let residual_ok = match residual {
        None => true,
        Some(Expr::BinaryExpr(BinaryExpr {
            left: a,
            op,
            right: b,
        })) => {
            // `row >= maximum` or `maximum <= row`, the maximum being the
            // right side's column after the left's.
            let n = left.schema.fields().len();
            let joined = left.schema.join(&right.schema).ok()?;
            let (a, b) = (column_index(a, &joined)?, column_index(b, &joined)?);
            let is_max = |i: usize| i >= n && origin(right, i - n) == (reduce, group_keys.len());
            match op {
                Operator::GtEq => a == value && is_max(b),
                Operator::LtEq => b == value && is_max(a),
                _ => false,
            }
        }
        Some(_) => false,
    };
    let column = |i: usize| Expr::Column(left.schema.columns()[i].clone());
    // An inner join's right columns: each the group key or maximum it
    // holds, as the left column that meets it.
    let right_columns = if semi {
        None
    } else {
        let columns = (0..right.schema.fields().len()).map(|j| match origin(right, j) {
            (at, col) if std::ptr::eq(at, reduce) => Some(column(met[col])),
            _ => None,
        });
        Some(columns.collect::<Option<Vec<_>>>()?)
    };
    residual_ok.then(|| RunningLeaders {
        right: right_columns,
        rows: left,
        group: met[..met.len() - 1].iter().map(|i| column(*i)).collect(),
        value: column(value),
    })
}

/// A picker of `exprs` (columns of `schema`) out of its rows.
fn picker(exprs: &[Expr], schema: &datafusion::common::DFSchema) -> Result<Option<Picker>, EngineError> {
    Ok(own_picker(exprs, schema)?.map(|(p, _)| p))
}

/// Render `leaders`: each inserted row keyed by its group, with its value
/// as a [`Tied`] state; retractions are skipped (see the module comment).
/// `None` where the columns cannot be picked out of the rows.
pub(crate) fn render_leaders<'s>(
    leaders: &RunningLeaders<'_>,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<Option<(Coll<'s>, Errs<'s>)>, EngineError> {
    let schema = &leaders.rows.schema;
    let (Some(group), Some(value)) = (
        picker(&leaders.group, schema)?,
        picker(std::slice::from_ref(&leaders.value), schema)?,
    ) else {
        return Ok(None);
    };
    let right = match &leaders.right {
        Some(columns) => match picker(columns, schema)? {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        None => None,
    };
    let (ok, err) = render(leaders.rows, scope, imports)?;
    let (states, errs) = batch_map(
        ok,
        "LeadersInserted",
        move |data: &mut Vec<(Row, Time, Diff)>, oks, errs| {
            let mut ends = Vec::new();
            for (r, t, d) in data.drain(..) {
                // A retraction's row comes back with a value as great.
                if d <= 0 {
                    continue;
                }
                let (mut key, mut v) = (Row::new(), Row::new());
                match group.pick(&r, &mut ends, &mut key) {
                    // A NULL key or value meets no maximum.
                    Some(()) if group.any_null(&r, &ends) => continue,
                    Some(()) => {}
                    None => {
                        errs.push((MISMATCHED_ROW.to_string(), t, d));
                        continue;
                    }
                }
                match value.pick(&r, &mut ends, &mut v) {
                    Some(()) if value.any_null(&r, &ends) => {}
                    Some(()) => {
                        // An inner join's match: the row, then the right
                        // side's columns out of it.
                        let r = match &right {
                            Some(right) => {
                                let mut columns = Row::new();
                                if right.pick(&r, &mut ends, &mut columns).is_none() {
                                    errs.push((MISMATCHED_ROW.to_string(), t, d));
                                    continue;
                                }
                                Row::concat(&r, &columns)
                            }
                            None => r,
                        };
                        oks.push((
                            key,
                            t,
                            Tied {
                                value: v,
                                rows: smallvec::smallvec![(r, d)],
                            },
                        ));
                    }
                    None => errs.push((MISMATCHED_ROW.to_string(), t, d)),
                }
            }
        },
    );
    let rows = derive_changes(
        states.as_collection(),
        "RunningLeaders",
        |_key: &Row, before, after, out| changes(before, after, out),
    );
    Ok(Some((rows, err.concat(errs))))
}

/// The output rows' changes from a group's state `before` to `after`.
fn changes(before: Option<&mut Tied>, after: &Tied, out: &mut Vec<(Row, Diff)>) {
    match before {
        // The same maximum: rows were appended.
        Some(b) if b.value == after.value && b.rows.len() <= after.rows.len() => {
            out.extend(after.rows[b.rows.len()..].iter().cloned());
        }
        before => {
            if let Some(b) = before {
                out.extend(b.rows.drain(..).map(|(r, d)| (r, -d)));
            }
            out.extend(after.rows.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Tied, changes};
    use crate::Diff;
    use crate::row::Row;
    use crate::running::RunningState;

    fn tied(value: u8, rows: &[u8]) -> Tied {
        Tied {
            value: Row::from(&[value][..]),
            rows: rows.iter().map(|r| (Row::from(&[*r][..]), 1)).collect(),
        }
    }

    fn rows(diffs: &[(Row, Diff)]) -> Vec<(u8, Diff)> {
        diffs.iter().map(|(r, d)| (r.as_slice()[0], *d)).collect()
    }

    /// A greater value replaces the rows, an equal one joins them, a
    /// lesser one changes nothing (and is absorbed), whatever the order.
    #[test]
    fn the_greatest_value_keeps_its_rows() {
        let mut state = tied(3, &[1]);
        assert!(state.absorbs(&tied(2, &[2])));
        assert!(!state.absorbs(&tied(3, &[2])));
        state.plus_owned(tied(2, &[2]));
        assert_eq!(state, tied(3, &[1]));
        state.plus_owned(tied(3, &[4]));
        assert_eq!(state, tied(3, &[1, 4]));
        state.plus_owned(tied(5, &[6]));
        assert_eq!(state, tied(5, &[6]));
        let mut other = tied(5, &[6]);
        other.plus_owned(tied(2, &[2]));
        assert_eq!(other, state);
    }

    /// Rows joining an equal maximum are inserted alone; a new maximum
    /// takes every earlier row back.
    #[test]
    fn changes_insert_joiners_and_retract_the_overtaken() {
        let mut out = Vec::new();
        changes(Some(&mut tied(3, &[1])), &tied(3, &[1, 4]), &mut out);
        assert_eq!(rows(&out), vec![(4, 1)]);
        out.clear();
        changes(Some(&mut tied(3, &[1, 4])), &tied(5, &[6]), &mut out);
        assert_eq!(rows(&out), vec![(1, -1), (4, -1), (6, 1)]);
        out.clear();
        changes(None, &tied(2, &[7, 8]), &mut out);
        assert_eq!(rows(&out), vec![(7, 1), (8, 1)]);
    }
}
