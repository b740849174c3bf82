//! An inner join's matches, made into output rows inside the join operator.
//!
//! Each match of a left and a right row becomes their concatenation (the
//! joined schema's encoding), kept or dropped by the join's residual filter
//! where that is decided on bytes ([`ByteFilter`]), and cut down to the
//! columns a MapFilterProject above the join keeps ([`Picker`]): one row
//! built per match, where pairing, filtering and projecting as separate
//! operators built four and decoded each to Arrow to filter it. This module
//! owns that step only; arranging the inputs and the other join kinds stay
//! in [`crate::render`].

use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use differential_dataflow::AsCollection;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::cursor::join::join_traces;
use timely::container::{CapacityContainerBuilder, PushInto};
use timely::dataflow::operators::OkErr;

use crate::byte_filter::ByteFilter;
use crate::eval::column_picker;
use crate::render::{Coll, ErrRow, Errs, KeyedSpine, MISMATCHED_ROW, RenderTime, arrow_schema};
use crate::row::{Row, RowCodec};
use crate::spans::Picker;

/// What becomes of each match: the filter it must pass and the columns
/// kept, each absent when there is none.
#[derive(Default)]
pub(crate) struct MatchMap {
    filter: Option<ByteFilter>,
    picker: Option<Picker>,
}

impl MatchMap {
    /// For an inner join whose `residual` (over the `joined` schema) is
    /// decided on bytes or absent; `None` when it must be evaluated.
    pub(crate) fn residual(residual: Option<&Expr>, joined: &DFSchema) -> Option<MatchMap> {
        Some(MatchMap {
            filter: decided(residual.map(std::slice::from_ref).unwrap_or_default(), joined)?,
            picker: None,
        })
    }

    /// For a MapFilterProject of `filters` and `projection` (into rows of
    /// `output`) over an inner join with `residual`, both over the `joined`
    /// schema: when every filter is decided on bytes and every projected
    /// expression is a column.
    pub(crate) fn fused(
        residual: Option<&Expr>,
        filters: &[Expr],
        projection: &[Expr],
        joined: &DFSchema,
        output: &DFSchema,
    ) -> Option<MatchMap> {
        let all: Vec<Expr> = residual.into_iter().chain(filters).cloned().collect();
        let filter = decided(&all, joined)?;
        let out = RowCodec::new(arrow_schema(output)).ok()?;
        let picker = column_picker(projection, joined, &out)?;
        Some(MatchMap {
            filter,
            picker: Some(picker),
        })
    }

    /// What the match of `l` and `r` becomes: `None` where the filter
    /// drops it, `Some(None)` where the rows do not walk as the joined
    /// schema (never expected). `joined` and `ends` are scratch space.
    pub(crate) fn make(
        &self,
        l: &[u8],
        r: &[u8],
        joined: &mut Vec<u8>,
        ends: &mut Vec<usize>,
    ) -> Option<Option<Row>> {
        joined.clear();
        joined.extend_from_slice(l);
        joined.extend_from_slice(r);
        let passes = match &self.filter {
            None => Some(true),
            Some(f) => f.passes(joined, ends),
        };
        match (passes, &self.picker) {
            (Some(false), _) => None,
            (Some(true), None) => Some(Some(Row::from(joined.as_slice()))),
            (Some(true), Some(p)) => {
                let mut row = Row::new();
                Some(p.pick(joined, ends, &mut row).map(|()| row))
            }
            (None, _) => Some(None),
        }
    }

    /// The output rows of joining `left` and `right`, and the errors of
    /// rows that do not walk as the joined schema (never expected).
    pub(crate) fn join<'s, T: RenderTime>(
        self,
        left: Arranged<'s, TraceAgent<KeyedSpine<T>>>,
        right: Arranged<'s, TraceAgent<KeyedSpine<T>>>,
    ) -> (Coll<'s, T>, Errs<'s, T>) {
        let mut joined: Vec<u8> = Vec::new();
        let mut ends = Vec::new();
        let matches = join_traces::<_, _, _, _, CapacityContainerBuilder<Vec<Match<T>>>>(
            left,
            right,
            "JoinMatches",
            move |_key, l: &[u8], r: &[u8], t, d1: &isize, d2: &isize, out| {
                if let Some(row) = self.make(l, r, &mut joined, &mut ends) {
                    out.push_into(matched(row, t, d1 * d2));
                }
            },
        );
        let (ok, err) = matches.ok_err(|r| r);
        (ok.as_collection(), err.as_collection())
    }
}

/// An output row of a join, or the error of a match that made none.
pub(crate) type Match<T> = Result<(Row, T, isize), ErrRow<T>>;

/// The update [`MatchMap::make`]'s answer `row` makes at `t` with `d`.
pub(crate) fn matched<T>(row: Option<Row>, t: T, d: isize) -> Match<T> {
    match row {
        Some(row) => Ok((row, t, d)),
        None => Err((MISMATCHED_ROW.to_string(), t, d)),
    }
}

/// The filter deciding all of `filters` on bytes: `Some(None)` when there
/// are none, `None` when one of them must be evaluated.
fn decided(filters: &[Expr], joined: &DFSchema) -> Option<Option<ByteFilter>> {
    if filters.is_empty() {
        return Some(None);
    }
    ByteFilter::new(filters, joined).map(Some)
}
