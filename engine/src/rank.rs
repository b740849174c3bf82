//! `row_number()` under a filter that keeps its first ranks: the per-group
//! TopK of `SELECT ... FROM (SELECT *, row_number() OVER (PARTITION BY p
//! ORDER BY o) AS rn FROM t) WHERE rn <= k` (Nexmark q18 and q19).
//!
//! The window path ([`crate::window`]) decodes every touched partition to
//! Arrow and numbers all of its rows with DataFusion, only for the filter
//! to drop all but k of them. Here each row is keyed by its partition and
//! carries its encoded sort key; a reduction over the partition's rows, in
//! the order differential keeps them (sort key, then the encoded row, the
//! very order and tie-break the window path numbers them in), emits the
//! first k rows with their numbers, encoded as the window path encodes
//! them. The filter and projection above the window are still applied to
//! the result unchanged, so a bound recognised here only ever drops rows
//! the filter would drop. This module owns that recognition and rendering.
//!
//! Over an input that only inserts ([`crate::render::monotonic`]) a
//! partition's first k rows never come back once passed, so each partition
//! keeps only them, as a running state ([`Leaders`]) that differential adds
//! up; an insert re-reads at most k rows, not the whole partition, and
//! only the numbered rows that moved are emitted ([`crate::running`]).
//! Nexmark q9, q18 and q19 read such inputs.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::compute::{SortOptions, cast};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, SortExpr};
use differential_dataflow::AsCollection;
use differential_dataflow::difference::{IsZero, Semigroup};
use serde::{Deserialize, Serialize};
use smallvec::{SmallVec, smallvec};
use weir_sql::{Plan, PlanNode};

use crate::eval::{RowEval, column_picker, column_picker_as, encode_group, expr_fields, strip_alias};
use crate::render::{Coll, Errs, MISMATCHED_ROW, batch_map, map_encoded_with};
use crate::row::{Row, RowCodec};
use crate::running::{RunningState, derive_changes};
use crate::spans::Picker;
use crate::{Diff, EngineError, Time};

/// Bounds beyond this are left to the window path.
const MOST: usize = 1_000;

/// A window node whose only function is `row_number()`, under filters
/// that bound its number from above.
pub(crate) struct RankPrefix<'a> {
    /// The window's input.
    pub input: &'a Plan,
    partition_by: &'a [Expr],
    order: &'a [SortExpr],
    /// The number's field in the window's output.
    number: Field,
    /// How many leading rows of each partition the filters can keep.
    keep: usize,
}

impl<'a> RankPrefix<'a> {
    /// `window` and the `filters` applied to its output, if they are such.
    pub fn of(window: &'a Plan, filters: &[Expr]) -> Option<Self> {
        let PlanNode::Window {
            input,
            partition_by,
            functions,
        } = &window.node
        else {
            return None;
        };
        let [function] = functions.as_slice() else {
            return None;
        };
        let Expr::WindowFunction(f) = strip_alias(function) else {
            return None;
        };
        let p = &f.params;
        if f.fun.name() != "row_number"
            || !p.args.is_empty()
            || p.filter.is_some()
            || p.distinct
            || &p.partition_by != partition_by
        {
            return None;
        }
        let at = input.schema.fields().len();
        let keep = filters
            .iter()
            .filter_map(|e| bound(e, &window.schema, at).map(|(last, _)| last))
            .min()?;
        Some(RankPrefix {
            input,
            partition_by,
            order: &p.order_by,
            number: window.schema.field(at).as_ref().clone(),
            keep,
        })
    }

    /// Whether the `filters` that made this hold for every row it emits
    /// (each bounds the number, and keeps every number up to the least
    /// bound), and `projection` of the window's output (`schema`) is its
    /// columns in order, with the number (`Some(true)`) or without it, last
    /// (`Some(false)`): then the rows it emits, numbered or not, are the
    /// result as they stand, and nothing needs decoding to filter and
    /// project them (Nexmark q9, q18 and q19).
    pub fn passes_through(&self, filters: &[Expr], projection: &[Expr], schema: &DFSchema) -> Option<bool> {
        let at = self.input.schema.fields().len();
        let all_kept = filters
            .iter()
            .all(|e| bound(e, schema, at).is_some_and(|(_, prefix)| prefix));
        let in_order = projection
            .iter()
            .enumerate()
            .all(|(i, e)| crate::eval::column_index(e, schema) == Some(i));
        (all_kept && in_order && (projection.len() == at || projection.len() == at + 1))
            .then_some(projection.len() == at + 1)
    }

    /// The window's output rows that the filters can keep, from `ok`, the
    /// window input's rows; `inserts_only` says those are only inserted,
    /// and `numbered` whether each row carries its number.
    pub fn render<'s>(
        &self,
        ok: Coll<'s>,
        inserts_only: bool,
        numbered: bool,
    ) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
        let schema = &self.input.schema;
        let order: Vec<Expr> = self.order.iter().map(|s| s.expr.clone()).collect();
        let eval = RowEval::new(schema, &[], &[self.partition_by, &order])?;
        let partition = RowCodec::new(Arc::new(Schema::new(expr_fields(
            self.partition_by,
            schema,
            "k",
        )?)))?;
        let options: Vec<SortOptions> = self
            .order
            .iter()
            .map(|s| SortOptions {
                descending: !s.asc,
                nulls_first: s.nulls_first,
            })
            .collect();
        let sort = RowCodec::with_options(
            Arc::new(Schema::new(expr_fields(&order, schema, "o")?)),
            options.clone(),
        )?;
        let keys = match (
            column_picker(self.partition_by, schema, &partition),
            column_picker_as(&order, schema, &sort, &options),
        ) {
            (Some(partition), Some(sort)) => Keys::Picked { partition, sort },
            _ => Keys::Evaluated {
                eval: Box::new(eval),
                partition,
                sort,
            },
        };
        // Every number this operator can emit, encoded once.
        let numbers: ArrayRef = Arc::new(UInt64Array::from_iter_values(1..=self.keep as u64));
        let numbers =
            cast(&numbers, self.number.data_type()).map_err(|e| EngineError::Expression(e.to_string()))?;
        let numbers = if numbered {
            RowCodec::new(Arc::new(Schema::new(vec![self.number.clone()])))?.encode(&[numbers], self.keep)?
        } else {
            vec![Row::new(); self.keep]
        };
        if inserts_only {
            return Ok(self.running(ok, keys, numbers, numbered));
        }
        let (keyed, errs) = keyed_by_partition(ok, "RankKeys", keys, |p, s, (r, t, d), oks, _| {
            oks.push(((p, (s, r)), t, d))
        });
        let keyed: differential_dataflow::VecCollection<'s, Time, (Row, (Row, Row)), Diff> =
            keyed.as_collection();
        let top = keyed
            .reduce_named(
                "RankPrefix",
                move |_partition, input: &[(&(Row, Row), Diff)], output: &mut Vec<(Row, Diff)>| {
                    let copies = input
                        .iter()
                        .flat_map(|((_, row), count)| std::iter::repeat_n(row, (*count).max(0) as usize));
                    for (row, number) in copies.zip(&numbers) {
                        output.push((Row::concat(row, number), 1));
                    }
                },
            )
            .map(|(_partition, row)| row);
        Ok((top, errs))
    }
}

impl RankPrefix<'_> {
    /// [`RankPrefix::render`] over rows that are only inserted: one
    /// [`Leaders`] state per partition.
    fn running<'s>(
        &self,
        ok: Coll<'s>,
        keys: Keys,
        numbers: Vec<Row>,
        numbered: bool,
    ) -> (Coll<'s>, Errs<'s>) {
        let keep = self.keep;
        let (states, errs) =
            keyed_by_partition(ok, "RankRunningKeys", keys, move |p, s, (r, t, d), oks, errs| {
                if d < 0 {
                    // Were the promise ever broken, the view says so rather
                    // than answer wrongly.
                    errs.push((
                        "internal error: a row was deleted from an input that only inserts".into(),
                        t,
                        1,
                    ));
                } else if keep > 0 {
                    oks.push((p, t, Leaders::one(keep, s, r, d)));
                }
            });
        let states: differential_dataflow::VecCollection<'s, Time, Row, Leaders> = states.as_collection();
        let top = derive_changes(states, "RankRunning", move |_partition, before, after, out| {
            if !numbered {
                // Unnumbered, a row only counts while among the first k.
                return Leaders::difference(before, after, out);
            }
            let before = before.as_deref().map(Leaders::positions).unwrap_or_default();
            let after = after.positions();
            for (i, number) in numbers.iter().enumerate().take(before.len().max(after.len())) {
                let (was, is) = (before.get(i), after.get(i));
                if was == is {
                    continue;
                }
                if let Some(row) = was {
                    out.push((Row::concat(row, number), -1));
                }
                if let Some(row) = is {
                    out.push((Row::concat(row, number), 1));
                }
            }
        });
        (top, errs)
    }
}

/// How a row's partition key and sort key are made.
enum Keys {
    /// Both are columns of the row: their bytes are picked, the sort
    /// key's re-encoded for its direction (Nexmark q18 and q19), with
    /// nothing decoded.
    Picked { partition: Picker, sort: Picker },
    /// Evaluated (`eval`'s two output groups) and encoded.
    Evaluated {
        eval: Box<RowEval>,
        partition: RowCodec,
        sort: RowCodec,
    },
}

/// Each row of `ok` with its partition key and its sort key, both
/// encoded as `keys` says, handed to `emit`.
fn keyed_by_partition<'s, O, F>(
    ok: Coll<'s>,
    name: &str,
    keys: Keys,
    mut emit: F,
) -> (timely::dataflow::Stream<'s, Time, Vec<O>>, Errs<'s>)
where
    O: Clone + 'static,
    F: FnMut(Row, Row, (Row, Time, Diff), &mut Vec<O>, &mut Vec<(String, Time, Diff)>) + 'static,
{
    let (eval, partition, sort) = match keys {
        Keys::Evaluated {
            eval,
            partition,
            sort,
        } => (*eval, partition, sort),
        Keys::Picked { partition, sort } => {
            return batch_map(ok, name, move |data: &mut Vec<(Row, Time, Diff)>, oks, errs| {
                let mut ends = Vec::new();
                for update in data.drain(..) {
                    let (mut p, mut s) = (Row::new(), Row::new());
                    let picked = partition
                        .pick(&update.0, &mut ends, &mut p)
                        .and_then(|()| sort.pick(&update.0, &mut ends, &mut s));
                    match picked {
                        Some(()) => emit(p, s, update, oks, errs),
                        None => errs.push((MISMATCHED_ROW.to_string(), update.1, update.2)),
                    }
                }
            });
        }
    };
    map_encoded_with(
        ok,
        name,
        eval,
        partition,
        move |ev| encode_group(&sort, ev, 1),
        move |update, pos, p, _, sorts: &Vec<Row>, oks, errs| {
            emit(p, sorts[pos].clone(), update.clone(), oks, errs)
        },
    )
}

/// A partition's first rows so far, over an input that only inserts: its
/// distinct rows with their sort keys and copies, in the window's order
/// (sort key, then the encoded row), at most `keep` copies in all. Adding
/// two states keeps the first `keep` of both.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Leaders {
    /// How many copies to keep; each state carries it because differential
    /// adds states without any context to ask.
    keep: usize,
    /// (sort key, row, copies), ascending by sort key and row; a first
    /// row inline, so that a top 1 (Nexmark q18, one state per bidder and
    /// auction) costs no allocation of its own, and reading it no
    /// pointer to chase.
    pub(crate) rows: SmallVec<[(Row, Row, Diff); 1]>,
}

impl Leaders {
    fn one(keep: usize, sort: Row, row: Row, copies: Diff) -> Self {
        Leaders {
            keep,
            rows: smallvec![(sort, row, copies.min(keep as Diff))],
        }
    }

    /// The change from the rows of `before` to those of `after`, as rows
    /// and the change in their copies; the rows leaving are taken from
    /// `before`.
    fn difference(before: Option<&mut Leaders>, after: &Leaders, out: &mut Vec<(Row, Diff)>) {
        let mut was = before
            .map(|b| b.rows.as_mut_slice())
            .unwrap_or_default()
            .iter_mut()
            .peekable();
        let mut is = after.rows.iter().peekable();
        loop {
            let order = match (was.peek(), is.peek()) {
                (Some((s1, r1, _)), Some((s2, r2, _))) => (s1, r1).cmp(&(s2, r2)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => return,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (_, r, c) = was.next().expect("peeked");
                    out.push((std::mem::take(r), -*c));
                }
                std::cmp::Ordering::Greater => {
                    let (_, r, c) = is.next().expect("peeked");
                    out.push((r.clone(), *c));
                }
                std::cmp::Ordering::Equal => {
                    let ((_, r, c1), (_, _, c2)) = (was.next().expect("peeked"), is.next().expect("peeked"));
                    if c1 != c2 {
                        out.push((r.clone(), c2 - *c1));
                    }
                }
            }
        }
    }

    /// How many copies it holds.
    fn held(&self) -> Diff {
        self.rows.iter().map(|(_, _, c)| c).sum()
    }

    /// Each kept copy's row, first to last.
    fn positions(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .flat_map(|(_, row, copies)| std::iter::repeat_n(row, *copies as usize))
            .collect()
    }
}

/// By hand, so that copying a state into one kept for the purpose reuses
/// its rows' allocations.
impl Clone for Leaders {
    fn clone(&self) -> Self {
        Leaders {
            keep: self.keep,
            rows: self.rows.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.keep = source.keep;
        self.rows.truncate(source.rows.len());
        for ((s, r, c), (source_s, source_r, source_c)) in self.rows.iter_mut().zip(&source.rows) {
            s.clone_from(source_s);
            r.clone_from(source_r);
            *c = *source_c;
        }
        let kept = self.rows.len();
        self.rows.extend(source.rows[kept..].iter().cloned());
    }
}

impl IsZero for Leaders {
    fn is_zero(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The operator adds states owned ([`RunningState::plus_owned`]); this is
/// for the collection's sake.
impl Semigroup for Leaders {
    fn plus_equals(&mut self, rhs: &Self) {
        self.plus_owned(rhs.clone());
    }
}

impl RunningState for Leaders {
    const ABSORBS: bool = true;

    /// Rows after the last of a full state change nothing.
    fn absorbs(&self, diff: &Self) -> bool {
        match (self.rows.last(), diff.rows.first()) {
            (Some((ls, lr, _)), Some((s, r, _))) => self.held() >= self.keep as Diff && (s, r) > (ls, lr),
            (_, None) => true,
            (None, Some(_)) => false,
        }
    }

    /// Keeps the first `keep` copies of both, moving `rhs`'s rows in.
    fn plus_owned(&mut self, rhs: Self) {
        let keep = self.keep.max(rhs.keep) as Diff;
        self.keep = keep as usize;
        let mut held = self.held();
        for (s, r, c) in rhs.rows {
            if held >= keep && self.rows.last().is_some_and(|(ls, lr, _)| (&s, &r) > (ls, lr)) {
                // The rest of `rhs` comes later still.
                break;
            }
            match self.rows.binary_search_by(|(s2, r2, _)| (s2, r2).cmp(&(&s, &r))) {
                Ok(i) => self.rows[i].2 += c,
                Err(i) => self.rows.insert(i, (s, r, c)),
            }
            held += c;
            // Copies beyond `keep` fall off the end.
            while held > keep {
                let last = self.rows.last_mut().expect("held copies are in rows");
                let excess = held - keep;
                if last.2 <= excess {
                    held -= last.2;
                    self.rows.pop();
                } else {
                    last.2 -= excess;
                    held = keep;
                }
            }
        }
    }

    /// A difference that fills the state with rows all ahead of its own
    /// replaces it: the state before is moved out, not copied (a
    /// newest-first top 1 over rows that arrive in time order, Nexmark
    /// q18).
    fn plus_keeping(&mut self, diff: Self, before: &mut Option<Self>) {
        let fills = diff.keep == self.keep && diff.held() >= diff.keep as Diff;
        let ahead = match (diff.rows.last(), self.rows.first()) {
            (Some((s, r, _)), Some((fs, fr, _))) => (s, r) < (fs, fr),
            _ => false,
        };
        if fills && ahead {
            *before = Some(std::mem::replace(self, diff));
        } else {
            crate::running::keep_before(self, before);
            self.plus_owned(diff);
        }
    }
}

/// How many leading numbers `filter` can keep, where it bounds the column
/// at index `at` of `schema` from above by a constant, and whether it
/// keeps every one of them (`= k` keeps only the last, unless k is 1).
fn bound(filter: &Expr, schema: &DFSchema, at: usize) -> Option<(usize, bool)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter else {
        return None;
    };
    let is_number = |e: &Expr| {
        let mut e = e;
        while let Expr::Cast(c) = e {
            e = &c.expr;
        }
        matches!(e, Expr::Column(c) if schema.index_of_column(c).ok() == Some(at))
    };
    let constant = |e: &Expr| match e {
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(n)) => Some(n),
            _ => None,
        },
        _ => None,
    };
    let (n, op) = if is_number(left) {
        (constant(right)?, *op)
    } else if is_number(right) {
        (constant(left)?, op.swap()?)
    } else {
        return None;
    };
    let (last, prefix) = match op {
        Operator::LtEq => (n, true),
        Operator::Eq => (n, n <= 1),
        Operator::Lt => (n - 1, true),
        _ => return None,
    };
    (last <= MOST as i64).then(|| (last.max(0) as usize, prefix))
}

#[cfg(test)]
mod tests {
    use super::Leaders;
    use crate::Diff;
    use crate::row::Row;
    use crate::running::RunningState;

    /// The first `keep` copies of `rows` (sort key, row, copies) in order,
    /// as a state holds them.
    fn first(keep: usize, rows: &[(u8, u8, Diff)]) -> Vec<(Row, Row, Diff)> {
        let mut copies: Vec<(u8, u8)> = rows
            .iter()
            .flat_map(|&(s, r, c)| std::iter::repeat_n((s, r), c as usize))
            .collect();
        copies.sort();
        copies.truncate(keep);
        let mut out: Vec<(Row, Row, Diff)> = Vec::new();
        for (s, r) in copies {
            let (s, r) = (Row::from(&[s][..]), Row::from(&[r][..]));
            match out.last_mut() {
                Some(last) if last.0 == s && last.1 == r => last.2 += 1,
                _ => out.push((s, r, 1)),
            }
        }
        out
    }

    fn state(keep: usize, rows: &[(u8, u8, Diff)]) -> Leaders {
        let mut rows = rows
            .iter()
            .map(|&(s, r, c)| Leaders::one(keep, Row::from(&[s][..]), Row::from(&[r][..]), c));
        let mut state = rows.next().expect("a row");
        rows.for_each(|row| state.plus_owned(row));
        state
    }

    /// Adding states, owned or keeping the state before (moved out where
    /// the difference replaces it), keeps the first `keep` copies of
    /// both, and the difference reported takes the leaving rows from the
    /// state before: checked against sorting every copy, for every pair
    /// of short sequences over a few rows.
    #[test]
    fn adding_keeps_the_first_copies() {
        let universe: Vec<(u8, u8, Diff)> = (0..3u8)
            .flat_map(|s| (0..2u8).flat_map(move |r| (1..=2).map(move |c| (s, r, c))))
            .collect();
        let mut sequences: Vec<Vec<(u8, u8, Diff)>> = universe.iter().map(|u| vec![*u]).collect();
        for a in &universe {
            for b in &universe {
                sequences.push(vec![*a, *b]);
            }
        }
        let mut replaced = 0;
        for keep in 1..=3 {
            for held in &sequences {
                for added in &sequences {
                    let all: Vec<_> = held.iter().chain(added).copied().collect();
                    let expected = first(keep, &all);
                    let mut owned = state(keep, held);
                    owned.plus_owned(state(keep, added));
                    assert_eq!(
                        owned.rows.as_slice(),
                        expected,
                        "keep {keep}: {held:?} + {added:?}"
                    );
                    let mut kept = state(keep, held);
                    let mut before = None;
                    kept.plus_keeping(state(keep, added), &mut before);
                    let before = before.expect("a state before");
                    assert_eq!(before.rows.as_slice(), first(keep, held));
                    assert_eq!(kept.rows.as_slice(), expected);
                    replaced += usize::from(expected.iter().all(|e| !before.rows.contains(e)));
                    // Each row's change in copies, by the rows' own counts.
                    let mut changes: Vec<(Row, Diff)> = Vec::new();
                    Leaders::difference(Some(&mut before.clone()), &kept, &mut changes);
                    for r in 0..2u8 {
                        let row = Row::from(&[r][..]);
                        let count = |rows: &[(Row, Row, Diff)]| -> Diff {
                            rows.iter().filter(|(_, x, _)| *x == row).map(|(_, _, c)| c).sum()
                        };
                        let changed: Diff = changes.iter().filter(|(x, _)| *x == row).map(|(_, d)| d).sum();
                        assert_eq!(changed, count(&kept.rows) - count(&before.rows));
                    }
                }
            }
        }
        assert!(replaced > 0, "no difference replaced a state");
    }
}
