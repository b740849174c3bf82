//! `count(DISTINCT x)` in O(1) per change, whatever the group's size.
//!
//! Each row's non-NULL value of `x` (its `FILTER` applied) is keyed by
//! the row's group and the aggregate, and counted in one arrangement; a
//! value whose count rises from zero adds one to the group's distinct
//! count, and one whose count falls to zero takes one away. These changes
//! are [`Accums`] contributions, added to the group's state beside the
//! other accumulable aggregates' (which skip distinct counts), so the
//! reduction around them stays as it is: Nexmark q15's nine distinct
//! counts of a day's bidders and auctions no longer re-read the day.
//! This module owns the distinct stage; the reductions that add its
//! output are in [`crate::render`] and [`crate::minmax`].

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use differential_dataflow::difference::IsZero;
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::core::Map;
use weir_sql::AggregateExpr;

use crate::eval::{RowEval, encode_alone};
use crate::reduce::{Accums, Accumulator};
use crate::render::{Coll, map_encoded_with};
use crate::row::{Row, RowCodec};
use crate::running::derive_changes;
use crate::sizes::measured;
use crate::{Diff, EngineError, Time};

/// The changes that the distinct counts among `aggregates` make to each
/// group's state, from `ok` (rows of `input`, grouped by `group_keys`
/// and encoded by `key_codec`); `None` where there are none. A row whose
/// key or value fails to evaluate adds nothing here: the reduction
/// evaluates the same expressions over the same rows and reports it.
pub(crate) fn contributions<'s>(
    ok: Coll<'s>,
    input: &DFSchema,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    key_codec: &RowCodec,
) -> Result<Option<VecCollection<'s, Time, Row, Accums>>, EngineError> {
    let distinct: Vec<usize> = (0..aggregates.len())
        .filter(|j| aggregates[*j].distinct)
        .collect();
    if distinct.is_empty() {
        return Ok(None);
    }
    let args: Vec<Expr> = distinct
        .iter()
        .map(|j| {
            aggregates[*j]
                .argument()
                .expect("a distinct count has an argument")
        })
        .collect();
    let eval = RowEval::new(input, &[], &[group_keys, &args])?;
    // Each value encoded alone, behind its aggregate's position.
    let encoders: Vec<(usize, RowCodec)> = crate::eval::expr_fields(&args, input, "v")?
        .into_iter()
        .enumerate()
        .map(|(i, f): (usize, Field)| Ok((i, RowCodec::new(Arc::new(Schema::new(vec![f])))?)))
        .collect::<Result<_, EngineError>>()?;
    let tags: Vec<[u8; 2]> = distinct.iter().map(|j| (*j as u16).to_be_bytes()).collect();
    let (values, _reported) = map_encoded_with(
        ok,
        "DistinctCountValues",
        eval,
        key_codec.duplicate(),
        move |ev| encode_alone(&encoders, ev, 1),
        move |(_, t, d), pos, key, _, values, oks, _| {
            for (tag, column) in tags.iter().zip(values) {
                if let Some(value) = &column[pos] {
                    oks.push(((key.clone(), Row::concat(tag, value)), *t, *d));
                }
            }
        },
    );
    // A hot value's copies in one batch (q16's hot bidders and auctions)
    // reach the arrangement as one update.
    let values = crate::render::combine(values.as_collection(), "DistinctCountCombine");
    let arranged = measured(
        values.arrange_by_self_named("Arrange: DistinctCount"),
        "Arrange: DistinctCount",
    );
    // Only a value's first copy and its last one change a count.
    let changes = derive_changes(
        arranged,
        "DistinctCount",
        |(key, tagged): &(Row, Row), before, after, out| match (before.is_some(), after.is_zero()) {
            (false, false) => out.push(((key.clone(), tagged.clone()), 1)),
            (true, true) => out.push(((key.clone(), tagged.clone()), -1)),
            _ => {}
        },
    );
    let acc = Accumulator::new(aggregates);
    let units = changes
        .inner
        .map::<Vec<_>, _, _>(move |((key, tagged), t, d): ((Row, Row), Time, Diff)| {
            let agg = u16::from_be_bytes([tagged[0], tagged[1]]) as usize;
            (key, t, acc.distinct_unit(agg, d))
        })
        .as_collection();
    Ok(Some(units))
}
