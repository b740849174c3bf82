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

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::Expr;
use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::dataflow::operators::OkErr;
use weir_sql::{AggregateExpr, AggregateFunc};

use crate::eval::RowEval;
use crate::reduce::{Accums, Accumulator, finalize};
use crate::render::{Coll, Errs, map_encoded};
use crate::row::{Row, RowCodec};
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

/// Reduce `ok` (rows of `input`) by `group_keys` into `[key, aggregates]`
/// rows, for aggregates that are all accumulable, `min` or `max`.
pub(crate) fn reduce<'s>(
    ok: Coll<'s>,
    input: &DFSchema,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    key_codec: &RowCodec,
    agg_codec: Arc<RowCodec>,
) -> Result<(Results<'s>, Errs<'s>), EngineError> {
    let args: Vec<Expr> = aggregates
        .iter()
        .map(|a| {
            a.arg
                .clone()
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
    // One pass over the input: each row's contribution to the group's state
    // (row count and the accumulable aggregates), and its extreme values.
    let acc = Accumulator::new(aggregates);
    let (mixed, errs) = map_encoded(
        ok,
        "ReduceExtremeValues",
        RowEval::new(input, &[], &[group_keys, &args])?,
        key_codec.duplicate(),
        move |(row, t, d), pos, key, ev, oks, errs| {
            match acc.contribution(&ev.outputs[1], pos, *d) {
                Ok(c) => oks.push(Ok((key.clone(), *t, c))),
                Err(e) => return errs.push((e, *t, *d)),
            }
            let bucket = row.hashed() & ((1 << BUCKET_BITS) - 1);
            for (j, (i, codec)) in encoders.iter().enumerate() {
                let column = &ev.outputs[1][*i];
                if column.is_null(pos) {
                    continue;
                }
                match codec.encode(&[column.slice(pos, 1)], 1) {
                    Ok(mut v) => oks.push(Err((((key.clone(), bucket), (j, v.remove(0))), *t, *d))),
                    Err(e) => errs.push((e.to_string(), *t, *d)),
                }
            }
        },
    );
    let (contributions, values) = mixed.ok_err(|r| r);
    let totals: VecCollection<'s, Time, Row, Accums> = contributions.as_collection();
    let states = totals
        .count_total()
        .flat_map(|(key, accums): (Row, Accums)| (accums.rows > 0).then_some((key, Part::State(accums))));
    let kinds: Arc<Vec<AggregateFunc>> = Arc::new(extremes.iter().map(|(_, f)| *f).collect());
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

    let aggs: Arc<Vec<AggregateExpr>> = Arc::new(aggregates.to_vec());
    let results = states.concat(extreme_parts).reduce_named(
        "ReduceAssemble",
        move |_key, input: &[(&Part, Diff)], output: &mut Vec<(Result<Row, String>, Diff)>| {
            let Some(Part::State(accums)) = input.first().map(|(p, _)| *p) else {
                return;
            };
            let assembled = (|| {
                let mut values: Vec<ScalarValue> = extremes
                    .iter()
                    .map(|(i, _)| ScalarValue::try_from(&aggs[*i].output_type).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?;
                for (part, _) in &input[1..] {
                    if let Part::Extreme(j, bytes) = part {
                        let batch = value_codecs[*j]
                            .decode(std::iter::once(bytes.as_slice()))
                            .map_err(|e| e.to_string())?;
                        values[*j] =
                            ScalarValue::try_from_array(batch.column(0), 0).map_err(|e| e.to_string())?;
                    }
                }
                let cols = finalize(&aggs, accums, &values)?;
                Ok(agg_codec.encode(&cols, 1).map_err(|e| e.to_string())?.remove(0))
            })();
            output.push((assembled, 1));
        },
    );
    let results = results.map(|(key, r)| r.map(|agg_row| [key, agg_row].concat()));
    Ok((results, errs))
}
