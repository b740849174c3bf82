//! `count(DISTINCT x)` in O(1) per change, whatever the group's size.
//!
//! Each row's non-NULL value of `x` is keyed by the row's group and `x`,
//! and counted in one arrangement, once under each `FILTER` of the
//! distinct counts of `x` (their counts side by side in one difference,
//! as Flink shares one map view per argument); a value whose count under
//! a filter rises from zero adds one to that aggregate's distinct count,
//! and one whose count falls to zero takes one away. These changes
//! are [`Accums`] contributions, added to the group's state beside the
//! other accumulable aggregates' (which skip distinct counts), so the
//! reduction around them stays as it is: Nexmark q15's nine distinct
//! counts of a day's bidders and auctions no longer re-read the day.
//! This module owns the distinct stage; the reductions that add its
//! output are in [`crate::render`] and [`crate::minmax`].

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::Map;
use weir_sql::AggregateExpr;

use crate::eval::{RowEval, encode_alone};
use crate::reduce::{Accums, Accumulator};
use crate::render::{Coll, map_encoded_with};
use crate::row::{Row, RowCodec};
use crate::running::{RunningState, derive_changes};
use crate::{Diff, EngineError, Time};

/// How many distinct counts of one argument share an entry.
const SLOTS: usize = 4;

/// A value's count in a group under each of up to [`SLOTS`] distinct
/// counts of one argument, which differ in their filters: q16's four
/// counts of a channel's bidders keep one entry per bidder, not four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct FilterCounts([i64; SLOTS]);

impl IsZero for FilterCounts {
    fn is_zero(&self) -> bool {
        self.0 == [0; SLOTS]
    }
}

impl Semigroup for FilterCounts {
    fn plus_equals(&mut self, rhs: &Self) {
        for (a, b) in self.0.iter_mut().zip(rhs.0) {
            *a += b;
        }
    }
}

impl RunningState for FilterCounts {}

/// Up to [`SLOTS`] distinct counts of one argument: for each, the
/// aggregate's position and its filter's (`None`: every value counts).
struct Share {
    arg: usize,
    slots: Vec<(usize, Option<usize>)>,
}

/// The distinct counts among `aggregates`, by argument and filter, and
/// the arguments and filters each evaluated once.
fn shares(aggregates: &[AggregateExpr]) -> (Vec<Share>, Vec<Expr>, Vec<Expr>) {
    let (mut shares, mut args, mut filters) = (Vec::<Share>::new(), Vec::new(), Vec::new());
    let position = |list: &mut Vec<Expr>, e: &Expr| match list.iter().position(|x| x == e) {
        Some(i) => i,
        None => {
            list.push(e.clone());
            list.len() - 1
        }
    };
    for (j, agg) in aggregates.iter().enumerate().filter(|(_, a)| a.distinct) {
        let arg = position(
            &mut args,
            agg.arg.as_ref().expect("a distinct count has an argument"),
        );
        let filter = agg.filter.as_ref().map(|f| position(&mut filters, f));
        match shares.iter_mut().find(|s| s.arg == arg && s.slots.len() < SLOTS) {
            Some(share) => share.slots.push((j, filter)),
            None => shares.push(Share {
                arg,
                slots: vec![(j, filter)],
            }),
        }
    }
    (shares, args, filters)
}

/// One value of share `share` in the group `key`, as one row: the share,
/// the value's length and the value come first, so that the sorts and
/// merges of many values of one group tell them apart in a few bytes
/// rather than after comparing the group's key again.
fn entry(share: usize, value: &[u8], key: &[u8]) -> Row {
    let mut row = Row::with_capacity(6 + value.len() + key.len());
    row.extend_from_slice(&(share as u16).to_be_bytes());
    row.extend_from_slice(&(value.len() as u32).to_be_bytes());
    row.extend_from_slice(value);
    row.extend_from_slice(key);
    row
}

/// The share and group key of an [`entry`].
fn split_entry(entry: &[u8]) -> (u16, Row) {
    let share = u16::from_be_bytes([entry[0], entry[1]]);
    let len = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]) as usize;
    (share, Row::from(&entry[6 + len..]))
}

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
    let (shares, args, filters) = shares(aggregates);
    if shares.is_empty() {
        return Ok(None);
    }
    let eval = RowEval::new(input, &[], &[group_keys, &args, &filters])?;
    // Each value encoded alone, behind its share's position.
    let encoders: Vec<(usize, RowCodec)> = crate::eval::expr_fields(&args, input, "v")?
        .into_iter()
        .enumerate()
        .map(|(i, f): (usize, Field)| Ok((i, RowCodec::new(Arc::new(Schema::new(vec![f])))?)))
        .collect::<Result<_, EngineError>>()?;
    let slots: Vec<Vec<Option<usize>>> = shares
        .iter()
        .map(|s| s.slots.iter().map(|(_, f)| *f).collect())
        .collect();
    let share_args: Vec<usize> = shares.iter().map(|s| s.arg).collect();
    let (values, _reported) = map_encoded_with(
        ok,
        "DistinctCountValues",
        eval,
        key_codec.duplicate(),
        move |ev| {
            let values = encode_alone(&encoders, ev, 1)?;
            let filters = ev.outputs[2]
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Boolean => Ok(f.as_boolean().clone()),
                    DataType::Null => Ok(BooleanArray::new_null(f.len())),
                    other => Err(format!("FILTER must be boolean, not {other}")),
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((values, filters))
        },
        move |(_, t, d), pos, key, _, (values, filters), oks, _| {
            for (s, (arg, slots)) in share_args.iter().zip(&slots).enumerate() {
                let Some(value) = &values[*arg][pos] else {
                    continue;
                };
                let mut counts = FilterCounts::default();
                for (count, filter) in counts.0.iter_mut().zip(slots) {
                    let counted = filter.is_none_or(|f| filters[f].is_valid(pos) && filters[f].value(pos));
                    if counted {
                        *count = *d as i64;
                    }
                }
                if !counts.is_zero() {
                    oks.push((entry(s, value, &key), *t, counts));
                }
            }
        },
    );
    // A hot value's copies in one batch (q16's hot bidders and auctions)
    // reach the state as one update.
    let values = crate::render::combine(values.as_collection(), "DistinctCountCombine");
    // Only a value's first copy under a filter and its last one change
    // that filter's count.
    let changes = derive_changes(
        values,
        "DistinctCount",
        |entry: &Row, before: Option<&mut FilterCounts>, after, out| {
            let mut signs = [0i8; SLOTS];
            for (slot, sign) in signs.iter_mut().enumerate() {
                let was = before.as_ref().is_some_and(|b| b.0[slot] != 0);
                match (was, after.0[slot] != 0) {
                    (false, true) => *sign = 1,
                    (true, false) => *sign = -1,
                    _ => {}
                }
            }
            if signs != [0; SLOTS] {
                let (share, key) = split_entry(entry);
                out.push(((key, share, signs), 1));
            }
        },
    );
    let acc = Accumulator::new(aggregates);
    let aggs: Vec<Vec<usize>> = shares
        .iter()
        .map(|s| s.slots.iter().map(|(j, _)| *j).collect())
        .collect();
    let units = changes
        .inner
        .map::<Vec<_>, _, _>(
            move |((key, share, signs), t, d): ((Row, u16, [i8; SLOTS]), Time, Diff)| {
                let changed = aggs[share as usize]
                    .iter()
                    .zip(signs)
                    .map(|(j, sign)| (*j, sign as Diff * d));
                (key, t, acc.distinct_units(changed))
            },
        )
        .as_collection();
    // A batch's new values of one group reach its state as one change.
    Ok(Some(crate::render::combine(units, "DistinctCountUnits")))
}
