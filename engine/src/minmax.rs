//! `min` and `max` without re-reading the group: a hierarchical reduction.
//!
//! Each non-NULL argument value, row-encoded so that byte order is value
//! order, is keyed by its group and a 12-bit hash bucket of its row. A
//! reduce keeps each bucket's least (or greatest) value; the buckets then
//! merge 16 at a time (12, 8, 4, then 0 bits), so a change re-reads one
//! bucket and at most 16 entries per level, not the whole group, as in
//! differential's examples and Materialize. Counts, sums and averages of
//! the same view accumulate in the difference as usual (which also says
//! whether a group exists at all), and one last reduce per group puts
//! the row together.
//!
//! Over an input that only inserts ([`crate::render::monotonic`]) no value
//! is ever taken back, so a group's extreme is a running value: each row
//! contributes a [`Running`] state (accumulable sums and its own values as
//! candidate extremes), differential adds states up per group, and one
//! arrangement holding one state per group replaces the hierarchy and the
//! last reduce. Materialize plans such inputs the same way. The same
//! running state serves a `max` of a column that only rises, such as a
//! count over inserts ([`crate::rising`]): its retractions are skipped,
//! each being below the value that replaces it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::Expr;
use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::dataflow::operators::OkErr;
use timely::dataflow::operators::core::Map;
use weir_sql::{AggregateExpr, AggregateFunc, GlobalId, Plan};

use crate::eval::{RowEval, encode_alone};
use crate::log::TableLog;
use crate::reduce::{Accums, Accumulator, finalize};
use crate::render::{Coll, Errs, combine, map_encoded_with};
use crate::row::{Row, RowCodec};
use crate::running::{RunningState, derive_changes};
use crate::{Diff, EngineError, Time};

/// Hash bits of the first level; each level above drops four.
const BUCKET_BITS: u32 = 12;

/// What the last reduce of a group sees: the group's accumulated state, or
/// one aggregate's extreme value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Part {
    State(Accums),
    Extreme(usize, Row),
}

type Results<'s> = VecCollection<'s, Time, Result<Row, String>, Diff>;
/// One level of the hierarchy: (group key, bucket) to (aggregate, value).
type Level<'s> = VecCollection<'s, Time, ((Row, u64), (usize, Row)), Diff>;

/// A group's state over an input that only inserts: its row count and
/// accumulable aggregates, and the extreme values seen so far (row-encoded,
/// NULLs skipped). Adding two states keeps the greater (or lesser) value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Running {
    pub(crate) accums: Accums,
    pub(crate) extremes: Vec<Extreme>,
}

/// One extreme of a [`Running`] state. It says which end it keeps because
/// differential adds states without any context to ask.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Extreme {
    max: bool,
    pub(crate) value: Option<Row>,
}

impl IsZero for Running {
    fn is_zero(&self) -> bool {
        self.accums.is_zero() && self.extremes.iter().all(|e| e.value.is_none())
    }
}

impl Semigroup for Running {
    fn plus_equals(&mut self, rhs: &Self) {
        self.accums.plus_equals(&rhs.accums);
        if self.extremes.is_empty() {
            self.extremes = rhs.extremes.clone();
            return;
        }
        for (a, b) in self.extremes.iter_mut().zip(&rhs.extremes) {
            let Some(new) = &b.value else { continue };
            let better = match &a.value {
                None => true,
                Some(old) if a.max => new > old,
                Some(old) => new < old,
            };
            if better {
                a.value = Some(new.clone());
            }
        }
    }
}

/// How the rows of a reduction's input change, as far as its extremes care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changes {
    /// Rows come and go.
    Any,
    /// Rows are only inserted ([`crate::render::monotonic`]).
    InsertsOnly,
    /// Each `max` argument only rises and a row never leaves its group
    /// ([`crate::rising`]): a retraction's value is below the one that
    /// replaces it, so retractions can be ignored.
    RisingMaxima,
}

impl Changes {
    /// What the rows of `input`, reduced by `group_keys` into `aggregates`,
    /// may do.
    pub(crate) fn of(
        input: &Plan,
        group_keys: &[Expr],
        aggregates: &[AggregateExpr],
        logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>,
    ) -> Changes {
        if crate::render::monotonic(input, logs) {
            Changes::InsertsOnly
        } else if crate::rising::max_of_rising(input, group_keys, aggregates, logs) {
            Changes::RisingMaxima
        } else {
            Changes::Any
        }
    }
}

/// Reduce `ok` (rows of `input`) by `group_keys` into `[key, aggregates]`
/// rows, for aggregates that are all accumulable, `min` or `max`;
/// `changes` says what the input's rows may do.
pub(crate) fn reduce<'s>(
    ok: Coll<'s>,
    input: &DFSchema,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    key_codec: &RowCodec,
    agg_codec: Arc<RowCodec>,
    changes: Changes,
) -> Result<(Results<'s>, Errs<'s>), EngineError> {
    let args: Vec<Expr> = aggregates
        .iter()
        .map(|a| {
            a.argument()
                .unwrap_or_else(|| datafusion::logical_expr::lit(true))
        })
        .collect();
    // Each extreme's values, encoded alone so bytes compare as values do.
    let extremes: Vec<(usize, AggregateFunc)> = aggregates
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a.func, AggregateFunc::Min | AggregateFunc::Max))
        .map(|(i, a)| (i, a.func))
        .collect();
    let value_codecs: Vec<RowCodec> = extremes
        .iter()
        .map(|(i, _)| {
            let field = Field::new("v", aggregates[*i].output_type.clone(), true);
            RowCodec::new(Arc::new(Schema::new(vec![field])))
        })
        .collect::<Result<_, _>>()?;
    let encoders: Vec<(usize, RowCodec)> = extremes
        .iter()
        .map(|(i, _)| *i)
        .zip(value_codecs.iter().map(RowCodec::duplicate))
        .collect();
    let kinds: Arc<Vec<AggregateFunc>> = Arc::new(extremes.iter().map(|(_, f)| *f).collect());
    let aggs: Arc<Vec<AggregateExpr>> = Arc::new(aggregates.to_vec());
    let eval = RowEval::new(input, &[], &[group_keys, &args])?;
    let assemble = move |accums: &Accums, parts: &mut dyn Iterator<Item = (usize, &Row)>| {
        let mut values: Vec<ScalarValue> = extremes
            .iter()
            .map(|(i, _)| ScalarValue::try_from(&aggs[*i].output_type).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        for (j, bytes) in parts {
            let batch = value_codecs[j]
                .decode(std::iter::once(bytes.as_slice()))
                .map_err(|e| e.to_string())?;
            values[j] = ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| e.to_string())?;
        }
        let cols = finalize(&aggs, accums, &values)?;
        Ok::<_, String>(agg_codec.encode(&cols, 1).map_err(|e| e.to_string())?.remove(0))
    };
    let distinct =
        crate::distinct_count::contributions(ok.clone(), input, group_keys, aggregates, key_codec)?;
    if changes != Changes::Any {
        let skip_retractions = changes == Changes::RisingMaxima;
        let (states, no_extremes, errs) =
            running_states(ok, eval, key_codec, aggregates, encoders, skip_retractions);
        return Ok((running(states, distinct, no_extremes, assemble), errs));
    }
    // One pass over the input: each row's contribution to the group's state
    // (row count and the accumulable aggregates), and its extreme values.
    let acc = Accumulator::new(aggregates);
    let (mixed, errs) = map_encoded_with(
        ok,
        "ReduceExtremeValues",
        eval,
        key_codec.duplicate(),
        move |ev| encode_alone(&encoders, ev, 1),
        move |(row, t, d), pos, key, ev, values, oks, errs| {
            match acc.contribution(&ev.outputs[1], pos, *d) {
                Ok(c) => oks.push(Ok((key.clone(), *t, c))),
                Err(e) => return errs.push((e, *t, *d)),
            }
            let bucket = row.hashed() & ((1 << BUCKET_BITS) - 1);
            for (j, column) in values.iter().enumerate() {
                if let Some(v) = &column[pos] {
                    oks.push(Err((((key.clone(), bucket), (j, v.clone())), *t, *d)));
                }
            }
        },
    );
    let (contributions, values) = mixed.ok_err(|r| r);
    let mut totals: VecCollection<'s, Time, Row, Accums> =
        combine(contributions.as_collection(), "ReduceExtremeCombine");
    if let Some(distinct) = distinct {
        totals = totals.concat(distinct);
    }
    let states = totals
        .count_total()
        .flat_map(|(key, accums): (Row, Accums)| (accums.rows > 0).then_some((key, Part::State(accums))));
    let mut level: Level<'s> = values.as_collection();
    let mut bits = BUCKET_BITS;
    loop {
        let kinds = kinds.clone();
        let reduced = level.reduce_named(
            &format!("ReduceMinMax{bits}"),
            move |_key, input: &[(&(usize, Row), Diff)], output: &mut Vec<((usize, Row), Diff)>| {
                // Sorted by aggregate, then by value: min is the first of
                // each run, max the last.
                let mut start = 0;
                while start < input.len() {
                    let j = input[start].0.0;
                    let end = start + input[start..].iter().take_while(|(v, _)| v.0 == j).count();
                    let pick = match kinds[j] {
                        AggregateFunc::Max => end - 1,
                        _ => start,
                    };
                    output.push((input[pick].0.clone(), 1));
                    start = end;
                }
            },
        );
        if bits == 0 {
            level = reduced;
            break;
        }
        bits -= 4;
        level = reduced.map(|((key, bucket), v)| ((key, bucket >> 4), v));
    }
    let extreme_parts = level.map(|((key, _), (j, v))| (key, Part::Extreme(j, v)));

    let results = states.concat(extreme_parts).reduce_named(
        "ReduceAssemble",
        move |_key, input: &[(&Part, Diff)], output: &mut Vec<(Result<Row, String>, Diff)>| {
            let Some(Part::State(accums)) = input.first().map(|(p, _)| *p) else {
                return;
            };
            let mut parts = input[1..].iter().filter_map(|(part, _)| match part {
                Part::Extreme(j, bytes) => Some((*j, bytes)),
                Part::State(_) => None,
            });
            output.push((assemble(accums, &mut parts), 1));
        },
    );
    let results = results.map(|(key, r)| r.map(|agg_row| Row::concat(&key, &agg_row)));
    Ok((results, errs))
}

/// [`reduce`] over an input that only inserts, or whose retractions may be
/// skipped: each row's contribution to its group's running state, and
/// the state of no extremes, for contributions from elsewhere.
fn running_states<'s>(
    ok: Coll<'s>,
    eval: RowEval,
    key_codec: &RowCodec,
    aggregates: &[AggregateExpr],
    encoders: Vec<(usize, RowCodec)>,
    skip_retractions: bool,
) -> (VecCollection<'s, Time, Row, Running>, Vec<Extreme>, Errs<'s>) {
    let acc = Accumulator::new(aggregates);
    let maxima: Vec<bool> = encoders
        .iter()
        .map(|(i, _)| aggregates[*i].func == AggregateFunc::Max)
        .collect();
    let no_extremes: Vec<Extreme> = maxima
        .iter()
        .map(|max| Extreme {
            max: *max,
            value: None,
        })
        .collect();
    let (states, errs) = map_encoded_with(
        ok,
        "ReduceRunning",
        eval,
        key_codec.duplicate(),
        move |ev| encode_alone(&encoders, ev, 1),
        move |(_, t, d), pos, key, ev, values, oks, errs| {
            // A running extreme cannot give a value back: were the promise
            // ever broken, the view says so rather than answer wrongly.
            if *d < 0 {
                if skip_retractions {
                    return;
                }
                return errs.push((
                    "internal error: a row was deleted from an input that only inserts".into(),
                    *t,
                    1,
                ));
            }
            let accums = match acc.contribution(&ev.outputs[1], pos, *d) {
                Ok(c) => c,
                Err(e) => return errs.push((e, *t, *d)),
            };
            let extremes = values
                .iter()
                .zip(&maxima)
                .map(|(column, max)| Extreme {
                    max: *max,
                    value: column[pos].clone(),
                })
                .collect();
            oks.push((key, *t, Running { accums, extremes }));
        },
    );
    (
        combine(states.as_collection(), "ReduceRunningCombine"),
        no_extremes,
        errs,
    )
}

/// One running state per group, from the rows' contributions (`states`)
/// and those of distinct counts, put together by `assemble`.
fn running<'s, A>(
    mut states: VecCollection<'s, Time, Row, Running>,
    distinct: Option<VecCollection<'s, Time, Row, Accums>>,
    no_extremes: Vec<Extreme>,
    assemble: A,
) -> Results<'s>
where
    A: Fn(&Accums, &mut dyn Iterator<Item = (usize, &Row)>) -> Result<Row, String> + 'static,
{
    if let Some(distinct) = distinct {
        states = states.concat(
            distinct
                .inner
                .map::<Vec<_>, _, _>(move |(key, t, accums): (Row, Time, Accums)| {
                    let extremes = no_extremes.clone();
                    (key, t, Running { accums, extremes })
                })
                .as_collection(),
        );
    }
    derive_changes(states, "ReduceRunning", move |key, before, after, out| {
        let row = |state: &Running| {
            let mut parts = state
                .extremes
                .iter()
                .enumerate()
                .filter_map(|(j, e)| e.value.as_ref().map(|v| (j, v)));
            assemble(&state.accums, &mut parts).map(|agg_row| Row::concat(key, &agg_row))
        };
        let before = before.map(|b| row(b));
        let after = (!after.is_zero()).then(|| row(after));
        if before == after {
            return;
        }
        out.extend(before.map(|r| (r, -1)));
        out.extend(after.map(|r| (r, 1)));
    })
}

impl RunningState for Running {}
