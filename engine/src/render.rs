//! Rendering the plan IR into differential dataflow.
//!
//! Every plan node becomes a pair of collections: the rows it produces and
//! the evaluation errors it raised (division by zero in one row, say). Errors
//! travel beside the data so that one bad row makes the view report an error
//! when read, without stopping the worker or any other view. Every operator
//! is named after the IR node it implements.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use differential_dataflow::batcher::merge::chunker::ContainerChunker;
use differential_dataflow::batcher::merge::vec::VecMerger;
use differential_dataflow::batcher::merge::{MergeBatcher, Sealer};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::Builder;
use differential_dataflow::trace::implementations::OffsetList;
use differential_dataflow::trace::implementations::ord_neu::{OrdValBatch, OrdValBuilder};
use differential_dataflow::trace::implementations::spine_fueled::Spine;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{OkErr, ToStream};
use timely::dataflow::{Scope, Stream};
use weir_sql::{AggregateExpr, GlobalId, JoinKind, Plan, PlanNode};

use crate::byte_filter::ByteFilter;
use crate::constant_join::{ConstantSide, join_constant};
use crate::eval::{Evaluated, RowEval, any_null, column_picker, encode_group};
use crate::join_matches::MatchMap;
use crate::log::{ErrorReader, Prepare, TableLog, TableReader};
use crate::minmax::Changes;
use crate::reduce::{Accums, Accumulator, GroupFolder, aggregate_schema, finalize};
use crate::row::{Row, RowCodec, RowContainer};
use crate::sizes::measured;
use crate::window::PartitionEval;
use crate::{Diff, EngineError, Time};

pub type Coll<'s, T = Time> = VecCollection<'s, T, Row, Diff>;
pub type Errs<'s, T = Time> = VecCollection<'s, T, String, Diff>;

/// Views and joins keep their rows in long-lived arrangements, laid out
/// as one byte buffer plus offsets per batch rather than an allocation per
/// row: less memory per row, and merges that copy bytes instead of
/// allocating each row again.
type Layout<V, T> = (RowContainer, V, Vec<T>, Vec<Diff>, OffsetList);
type Updates<V, T> = Vec<((Row, V), T, Diff)>;
pub type KeyedSpine<T = Time> = Spine<Rc<OrdValBatch<Layout<RowContainer, T>>>>;
pub type KeyedBatcher<T = Time> =
    MergeBatcher<ContainerChunker<Updates<Row, T>>, VecMerger<(Row, Row), T, Diff>, KeyedSealer<T>>;

/// Seals a sorted chain of keyed rows into a batch, its byte buffers sized
/// from the chain first. A view catching up on a backlog seals batches of
/// hundreds of megabytes: grown by doubling instead, their buffers faulted
/// in and copied about twice that (a tenth of Nexmark q4's CPU went to the
/// kernel zeroing those pages).
pub struct KeyedSealer<T>(std::marker::PhantomData<T>);

impl<T: RenderTime> Sealer<Updates<Row, T>> for KeyedSealer<T> {
    type Output = OrdValBatch<Layout<RowContainer, T>>;

    fn seal(chain: &mut Vec<Updates<Row, T>>) -> Option<Self::Output> {
        let (mut keys, mut vals, mut upds, mut key_bytes, mut val_bytes) = (0, 0, 0, 0, 0);
        let mut prev: Option<(&Row, &Row)> = None;
        for ((k, v), _, _) in chain.iter().flatten() {
            match prev {
                Some((pk, pv)) if pk == k => {
                    if pv != v {
                        vals += 1;
                        val_bytes += v.len();
                    }
                }
                _ => {
                    keys += 1;
                    key_bytes += k.len();
                    vals += 1;
                    val_bytes += v.len();
                }
            }
            upds += 1;
            prev = Some((k, v));
        }
        let mut builder =
            OrdValBuilder::<Layout<RowContainer, T>, Updates<Row, T>>::with_capacity(keys, vals, upds);
        builder.result.keys = RowContainer::with_capacities(keys, key_bytes);
        builder.result.vals.vals = RowContainer::with_capacities(vals, val_bytes);
        for mut chunk in chain.drain(..) {
            builder.push(&mut chunk);
        }
        builder.done()
    }
}

/// A reduction's results by group key.
type ResultLayout<T> = (
    RowContainer,
    Vec<Result<Row, String>>,
    Vec<T>,
    Vec<Diff>,
    OffsetList,
);
type ResultSpine<T> = Spine<Rc<OrdValBatch<ResultLayout<T>>>>;
type ResultBuilder<T> = OrdValBuilder<ResultLayout<T>, Vec<((Row, Result<Row, String>), T, Diff)>>;

/// `reduce_named` over rows keyed by rows, with the input (every row of
/// every group) and the output arranged in the row container.
fn reduce_rows<'s, L>(
    input: Keyed<'s>,
    name: &str,
    logic: L,
) -> VecCollection<'s, Time, (Row, Result<Row, String>), Diff>
where
    L: FnMut(&[u8], &[(&[u8], Diff)], &mut Vec<(Result<Row, String>, Diff)>) + 'static,
{
    let arrange = format!("Arrange: {name}");
    let input = input.arrange_named::<KeyedBatcher, KeyedSpine>(&arrange, KeyedBatcher::new);
    let results = measured(input, &arrange)
        .reduce_abelian::<_, ResultBuilder<Time>, ResultSpine<Time>, _, _>(
            name,
            logic,
            |out, key, updates| {
                out.clear();
                out.extend(updates.drain(..).map(|(v, t, d)| ((Row::from(key), v), t, d)));
            },
        );
    measured(results, name).as_collection(|k, v| (Row::from(k), v.clone()))
}

/// A reduce that evaluates each partition of `input` (rows keyed by their
/// partition) with `evaluate`, which gives the partition's output rows or
/// one error for the partition.
pub(crate) fn reduce_partitions<'s, F>(input: Keyed<'s>, name: &str, evaluate: F) -> (Coll<'s>, Errs<'s>)
where
    F: Fn(&[(&[u8], Diff)]) -> Result<Vec<(Row, Diff)>, String> + 'static,
{
    let results = reduce_rows(
        input,
        name,
        move |_key: &[u8], rows: &[(&[u8], Diff)], output: &mut Vec<(Result<Row, String>, Diff)>| {
            match evaluate(rows) {
                Ok(out) => output.extend(out.into_iter().map(|(r, d)| (Ok(r), d))),
                Err(e) => output.push((Err(e), 1)),
            }
        },
    );
    let (rows, errs): (RowStream<'s>, ErrStream<'s>) = results.inner.ok_err(|((_key, r), t, d)| match r {
        Ok(r) => Ok((r, t, d)),
        Err(e) => Err((e, t, d)),
    });
    (rows.as_collection(), errs.as_collection())
}

/// Each distinct element of `rows` once (DISTINCT, semi-join hits, set
/// operations): differential's `distinct_core`, with its input and output
/// arrangements measured (see [`crate::sizes`]).
pub(crate) fn distinct<'s, T, K>(
    rows: VecCollection<'s, T, K, Diff>,
    name: &str,
) -> VecCollection<'s, T, K, Diff>
where
    T: RenderTime,
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable + crate::sizes::Element,
{
    use differential_dataflow::trace::implementations::{KeyBuilder, KeySpine};
    let arrange = format!("Arrange: {name}");
    let arranged = measured(rows.arrange_by_self_named(&arrange), &arrange);
    let once = arranged.reduce_abelian::<_, KeyBuilder<K, T, Diff>, KeySpine<K, T, Diff>, _, _>(
        name,
        |_key, _input, output| output.push(((), 1)),
        |out, key, updates| {
            out.clear();
            out.extend(updates.drain(..).map(|(v, t, d)| ((key.clone(), v), t, d)));
        },
    );
    measured(once, name).as_collection(|k, _| k.clone())
}

/// Rows keyed by an encoded key.
pub type Keyed<'s, T = Time> = VecCollection<'s, T, (Row, Row), Diff>;
type RowStream<'s, T = Time> = Stream<'s, T, Vec<(Row, T, Diff)>>;
type ErrStream<'s, T = Time> = Stream<'s, T, Vec<ErrRow<T>>>;

/// The timestamps a plan can be rendered at: Weir time, and Weir time
/// paired with an iteration counter inside `WITH RECURSIVE`.
pub trait RenderTime:
    timely::progress::Timestamp + differential_dataflow::lattice::Lattice + crate::sizes::Element
{
}
impl<T: timely::progress::Timestamp + differential_dataflow::lattice::Lattice + crate::sizes::Element>
    RenderTime for T
{
}

/// What a dataflow may read: tables and materialized views, kept as logs
/// ([`crate::log`]), each `Get` of which becomes an input of the
/// dataflow's own (and, for a view, an input of its errors) that the
/// worker feeds once the dataflow is built.
pub struct Imports<'a, 's> {
    logs: &'a HashMap<GlobalId, Rc<RefCell<TableLog>>>,
    inputs: Vec<Input>,
    /// Rendered subplans that are worth sharing (reductions, joins, ...),
    /// so that a subplan written twice (a CTE read twice, as Nexmark q5
    /// reads its counts) is computed once.
    shared: Vec<(Plan, (Coll<'s>, Errs<'s>))>,
}

/// A dataflow's input of a logged relation: its rows (mapped and
/// filtered by `prepare` where given) and their errors.
pub struct Input {
    pub id: GlobalId,
    pub rows: TableReader,
    pub errors: Option<ErrorReader>,
    pub prepare: Option<Prepare>,
}

impl<'a, 's> Imports<'a, 's> {
    pub fn new(logs: &'a HashMap<GlobalId, Rc<RefCell<TableLog>>>) -> Self {
        Imports {
            logs,
            inputs: Vec::new(),
            shared: Vec::new(),
        }
    }

    /// The inputs `Get`s asked for, to be fed.
    pub fn into_inputs(self) -> Vec<Input> {
        self.inputs
    }
}

/// Render `plan` in `scope`. A stateful subplan equal to one already
/// rendered in this dataflow reuses its collections.
#[recursive::recursive]
pub fn render<'s>(
    plan: &Plan,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let stateful = matches!(
        plan.node,
        PlanNode::Join { .. }
            | PlanNode::Reduce { .. }
            | PlanNode::TopK { .. }
            | PlanNode::Distinct { .. }
            | PlanNode::Window { .. }
            | PlanNode::Recursive { .. }
    );
    if !stateful {
        return render_node(plan, scope, imports);
    }
    if let Some((_, rendered)) = imports.shared.iter().find(|(p, _)| p == plan) {
        return Ok(rendered.clone());
    }
    let rendered = render_node(plan, scope, imports)?;
    imports.shared.push((plan.clone(), rendered.clone()));
    Ok(rendered)
}

fn render_node<'s>(
    plan: &Plan,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let worker = scope.index();
    match &plan.node {
        PlanNode::Get { id, .. } => render_get(*id, None, scope, imports),
        PlanNode::Constant { batch } => {
            let codec = RowCodec::new(arrow_schema(&plan.schema))?;
            let rows = if worker == 0 {
                codec.encode(batch.columns(), batch.num_rows())?
            } else {
                vec![]
            };
            let ok = rows
                .into_iter()
                .map(|r| (r, 0, 1))
                .to_stream(scope)
                .as_collection();
            Ok((ok, empty(scope)))
        }
        PlanNode::MapFilterProject {
            input,
            filters,
            projection,
        } => {
            if let PlanNode::Get { id, .. } = &input.node {
                // The log evaluates it over the Arrow batches it holds as
                // it feeds them in: each row is encoded once, already
                // mapped, not encoded, decoded to evaluate and encoded again.
                let prepare = Prepare {
                    eval: RowEval::new(&input.schema, filters, &[projection])?,
                    codec: RowCodec::new(arrow_schema(&plan.schema))?,
                };
                return render_get(*id, Some(prepare), scope, imports);
            }
            if let Some(prefix) = crate::rank::RankPrefix::of(input, filters) {
                // `row_number() ... <= k`: only the first k rows of each
                // partition are numbered; the filters still apply.
                let (ok, err) = render(prefix.input, scope, imports)?;
                let inserts_only = monotonic(prefix.input, imports.logs);
                if let Some(numbered) = prefix.passes_through(filters, projection, &input.schema) {
                    let (ok, err2) = prefix.render(ok, inserts_only, numbered)?;
                    return Ok((ok, err.concat(err2)));
                }
                let (ok, err2) = prefix.render(ok, inserts_only, true)?;
                let (ok, err3) = map_filter_project(ok, &input.schema, filters, projection, &plan.schema)?;
                return Ok((ok, err.concat(err2).concat(err3)));
            }
            if let PlanNode::Join { left, right, .. } = &input.node
                && let Some(spec) = JoinSpec::of(&input.node)
                && spec.kind == JoinKind::Inner
                && ConstantSide::of(left, right, spec.left_keys, spec.right_keys).is_none()
                && crate::leaders::of(left, right, &spec, imports.logs).is_none()
                && !imports.shared.iter().any(|(p, _)| p == input.as_ref())
                && let Some(map) =
                    MatchMap::fused(spec.residual, filters, projection, &input.schema, &plan.schema)
            {
                // Filtered and projected as the join makes each match.
                let inserts_only = monotonic(left, imports.logs) && monotonic(right, imports.logs);
                let l = render(left, scope, imports)?;
                let r = render(right, scope, imports)?;
                return join_mapped(l, r, &left.schema, &right.schema, &spec, Some(map), inserts_only);
            }
            let (ok, err) = render(input, scope, imports)?;
            let (ok, err2) = map_filter_project(ok, &input.schema, filters, projection, &plan.schema)?;
            Ok((ok, err.concat(err2)))
        }
        PlanNode::Join { left, right, .. } => {
            let spec = JoinSpec::of(&plan.node).expect("a join node");
            render_join(left, right, &spec, scope, imports)
        }
        PlanNode::Reduce {
            input,
            group_keys,
            aggregates,
        } => render_reduce(plan, input, group_keys, aggregates, scope, imports),
        PlanNode::TopK {
            input,
            order,
            limit,
            offset,
        } => {
            let (ok, err) = render(input, scope, imports)?;
            let (ok, err2) = render_topk(ok, &input.schema, order, *limit, *offset)?;
            Ok((ok, err.concat(err2)))
        }
        PlanNode::Distinct { input } => {
            let (ok, err) = render(input, scope, imports)?;
            Ok((distinct(ok, "Distinct"), err))
        }
        PlanNode::Recursive {
            name,
            base,
            step,
            distinct,
        } => crate::recursive::render_recursive(name, base, step, *distinct, scope, imports),
        PlanNode::RecursiveRef { name } => Err(EngineError::Expression(format!(
            "recursive reference to {name} outside its WITH RECURSIVE"
        ))),
        PlanNode::Window {
            input,
            partition_by,
            functions,
        } => {
            let (ok, err) = render(input, scope, imports)?;
            let eval = PartitionEval::new(&input.schema, functions, &plan.schema)?;
            let (keyed, kerr) = keyed(ok, &input.schema, partition_by, true, "WindowPartition")?;
            let (rows, errs) = reduce_partitions(keyed, "Window", move |rows| eval.evaluate(rows));
            Ok((rows, err.concat(kerr).concat(errs)))
        }
        PlanNode::Union { inputs } => {
            let parts = inputs
                .iter()
                .map(|i| render(i, scope, imports))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(union_all(scope, parts))
        }
    }
}

/// A dataflow's input of the logged relation `id`, mapped and filtered
/// by `prepare` as the log feeds it where given. Its errors: a view's
/// own, and those `prepare` raises.
fn render_get<'s>(
    id: GlobalId,
    prepare: Option<Prepare>,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let log = imports.logs.get(&id).ok_or(EngineError::UnknownRelation(id))?;
    let mut rows = TableReader::new();
    let ok = rows.to_collection(scope);
    let (err, errors) = if prepare.is_some() || log.borrow().is_view() {
        let mut errors = ErrorReader::new();
        (errors.to_collection(scope), Some(errors))
    } else {
        (empty(scope), None)
    };
    imports.inputs.push(Input {
        id,
        rows,
        errors,
        prepare,
    });
    Ok((ok, err))
}

/// How a view's dataflow hands its changes to the view's log
/// ([`crate::log::record_output`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputShape {
    /// Every change to a row is made on one worker: the rows need no
    /// exchange for a deletion to meet what it deletes.
    pub local: bool,
    /// Each time's changes hold a row at most once: there is nothing to
    /// cancel among them before they are stored.
    pub net: bool,
}

/// The [`OutputShape`] of `plan`'s changes. Maps, filters and unions of
/// logged relations keep rows where their input placed them, so that a
/// deletion meets what it deletes. A partition's first rows
/// ([`crate::rank::RankPrefix`]) passed through as they stand are made
/// where their partition is kept, and a row names its partition, so
/// every change to it is made there; each partition's changes at a time
/// are one difference, so they are net too (Nexmark q18 and q19: hashing
/// every row twice over, to route it and to cancel, was 2% of their
/// instructions).
/// Any other operator may produce a row on one worker and take it back
/// on another (a global aggregate's row for empty input, say).
pub fn output_shape(plan: &Plan) -> OutputShape {
    let shape = |local, net| OutputShape { local, net };
    match &plan.node {
        PlanNode::Get { .. } => shape(true, false),
        PlanNode::MapFilterProject {
            input,
            filters,
            projection,
        } => match crate::rank::RankPrefix::of(input, filters) {
            Some(prefix) => {
                let through = prefix
                    .passes_through(filters, projection, &input.schema)
                    .is_some();
                shape(through, through)
            }
            None => shape(output_shape(input).local, false),
        },
        PlanNode::Union { inputs } => shape(inputs.iter().all(|i| output_shape(i).local), false),
        _ => shape(false, false),
    }
}

/// Whether `plan` only ever inserts rows: it maps, filters, unions and
/// inner-joins constants and relations whose logs only insert. Reductions
/// over such a plan keep `min`/`max` as one running value per group
/// ([`crate::minmax`]), and an inner join of two keeps each side's rows
/// in a hash table ([`crate::insert_join`]); anything that can take a row back (a reduction,
/// an outer join's padding, a TopK) ends the promise.
pub fn monotonic(plan: &Plan, logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>) -> bool {
    match &plan.node {
        PlanNode::Get { id, .. } => logs.get(id).is_some_and(|l| l.borrow().is_append_only()),
        PlanNode::Constant { .. } => true,
        PlanNode::MapFilterProject { input, .. } => monotonic(input, logs),
        PlanNode::Union { inputs } => inputs.iter().all(|i| monotonic(i, logs)),
        PlanNode::Join {
            left,
            right,
            kind: JoinKind::Inner,
            ..
        } => monotonic(left, logs) && monotonic(right, logs),
        _ => false,
    }
}

/// The bag union of rendered inputs, rows and errors alike.
pub(crate) fn union_all<'s, T: RenderTime>(
    scope: Scope<'s, T>,
    parts: Vec<(Coll<'s, T>, Errs<'s, T>)>,
) -> (Coll<'s, T>, Errs<'s, T>) {
    let (oks, errs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    (
        differential_dataflow::collection::concatenate(scope, oks),
        differential_dataflow::collection::concatenate(scope, errs),
    )
}

/// An empty collection.
pub fn empty<'s, T: RenderTime, D: Clone + 'static>(scope: Scope<'s, T>) -> VecCollection<'s, T, D, Diff> {
    Vec::<(D, T, Diff)>::new().to_stream(scope).as_collection()
}

/// Keep the rows of `ok` (of `input` schema) that pass `filters`, and
/// compute `projection` over them into rows of `output` schema.
pub(crate) fn map_filter_project<'s, T: RenderTime>(
    ok: Coll<'s, T>,
    input: &DFSchema,
    filters: &[Expr],
    projection: &[Expr],
    output: &DFSchema,
) -> Result<(Coll<'s, T>, Errs<'s, T>), EngineError> {
    let out = RowCodec::new(arrow_schema(output))?;
    if let Some(picker) = column_picker(projection, input, &out) {
        // Columns dropped or reordered (above a join, say): their bytes
        // are copied; filters are decided on the bytes where they can be,
        // and otherwise only what they read is decoded.
        let bytes = ByteFilter::new(filters, input);
        let filter = (bytes.is_none() && !filters.is_empty())
            .then(|| RowEval::new(input, filters, &[]))
            .transpose()?;
        let (ok, err) = batch_map(
            ok,
            "MapFilterProject",
            move |data: &mut Vec<(Row, T, Diff)>, oks, errs| {
                let mut ends = Vec::new();
                let mut pick = |(r, t, d): &(Row, T, Diff), oks: &mut Vec<_>, errs: &mut Vec<ErrRow<T>>| {
                    let mut row = Row::with_capacity(r.len());
                    match picker.pick(r, &mut ends, &mut row) {
                        Some(()) => oks.push((row, t.clone(), *d)),
                        None => errs.push((MISMATCHED_ROW.to_string(), t.clone(), *d)),
                    }
                };
                match (&bytes, &filter) {
                    (Some(bytes), _) => {
                        let mut scratch = Vec::new();
                        for u in data {
                            match bytes.passes(&u.0, &mut scratch) {
                                Some(true) => pick(u, oks, errs),
                                Some(false) => {}
                                None => errs.push((MISMATCHED_ROW.to_string(), u.1.clone(), u.2)),
                            }
                        }
                    }
                    (None, None) => data.iter().for_each(|u| pick(u, oks, errs)),
                    (None, Some(filter)) => {
                        let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
                        for_each_evaluated(filter, &rows, errs, data, |kept, _, errs| {
                            kept.iter().for_each(|i| pick(&data[*i], oks, errs))
                        });
                    }
                }
            },
        );
        return Ok((ok.as_collection(), err));
    }
    let eval = RowEval::new(input, filters, &[projection])?;
    let (ok, err) = map_encoded(
        ok,
        "MapFilterProject",
        eval,
        out,
        |(_, t, d), _, row, _, oks, _| oks.push((row, t.clone(), *d)),
    );
    Ok((ok.as_collection(), err))
}

pub fn arrow_schema(schema: &DFSchema) -> Arc<Schema> {
    Arc::new(schema.as_arrow().clone())
}

pub(crate) type ErrRow<T = Time> = (String, T, Diff);

/// The error of a row whose bytes do not walk as its schema's encoding
/// (never expected: rows are encoded by the engine itself).
pub(crate) const MISMATCHED_ROW: &str = "a row does not match its schema";

/// Apply `logic` to each batch of updates, which it may take from.
/// `logic` pushes output updates and errors (message, time, diff).
pub(crate) fn batch_map<'s, T, D, O, L>(
    input: VecCollection<'s, T, D, Diff>,
    name: &str,
    mut logic: L,
) -> (Stream<'s, T, Vec<O>>, Errs<'s, T>)
where
    T: RenderTime,
    D: Clone + 'static,
    O: Clone + 'static,
    L: FnMut(&mut Vec<(D, T, Diff)>, &mut Vec<O>, &mut Vec<ErrRow<T>>) + 'static,
{
    let mixed = input
        .inner
        .unary::<timely::container::CapacityContainerBuilder<Vec<Result<O, ErrRow<T>>>>, _, _, _>(
            Pipeline,
            name,
            |_cap, _info| {
                let mut oks = Vec::new();
                let mut errs = Vec::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        logic(data, &mut oks, &mut errs);
                        let mut session = output.session(&cap);
                        for o in oks.drain(..) {
                            session.give(Ok(o));
                        }
                        for e in errs.drain(..) {
                            session.give(Err(e));
                        }
                    });
                }
            },
        );
    let (ok, err): (Stream<'s, T, Vec<O>>, ErrStream<'s, T>) = mixed.ok_err(|r| r);
    (ok, err.as_collection())
}

/// Sums the updates that share data and time among those an operator
/// receives at once, before they are exchanged and arranged: the rows of
/// a hot group reach the arrangement as one update, not one per row
/// (Flink's local aggregation; a combiner in MapReduce). For updates whose
/// difference is a reduction's state (counts, sums, running extremes, the
/// first k rows), so that only semigroups differential adds up anyway.
pub(crate) fn combine<'s, D, R>(
    updates: VecCollection<'s, Time, D, R>,
    name: &str,
) -> VecCollection<'s, Time, D, R>
where
    D: Clone + std::hash::Hash + Eq + 'static,
    R: differential_dataflow::difference::Semigroup + 'static,
{
    updates
        .inner
        .unary::<timely::container::CapacityContainerBuilder<Vec<(D, Time, R)>>, _, _, _>(
            Pipeline,
            name,
            |_cap, _info| {
                let mut sums: hashbrown::HashMap<(D, Time), R> = hashbrown::HashMap::new();
                move |input, output| {
                    input.for_each_stamp(|cap, containers| {
                        for data in containers {
                            for (d, t, r) in data.drain(..) {
                                match sums.entry((d, t)) {
                                    hashbrown::hash_map::Entry::Occupied(mut e) => {
                                        e.get_mut().plus_equals(&r)
                                    }
                                    hashbrown::hash_map::Entry::Vacant(e) => {
                                        e.insert(r);
                                    }
                                }
                            }
                        }
                        let mut session = output.session(&cap);
                        for ((d, t), r) in sums.drain() {
                            if !r.is_zero() {
                                session.give((d, t, r));
                            }
                        }
                    });
                }
            },
        )
        .as_collection()
}

/// Evaluate `rows`, calling `on_ok` with the absolute input indices of the
/// rows that passed the filters and their evaluation, and recording an error
/// for each row that failed.
pub(crate) fn for_each_evaluated<D, T: Clone>(
    eval: &RowEval,
    rows: &[&[u8]],
    errs: &mut Vec<ErrRow<T>>,
    data: &[(D, T, Diff)],
    mut on_ok: impl FnMut(&[usize], &Evaluated, &mut Vec<ErrRow<T>>),
) {
    let (full, partial, failed) = eval.eval_rows(rows);
    if let Some(ev) = full {
        on_ok(&ev.kept, &ev, errs);
    }
    for (i, ev) in partial {
        let indices: Vec<usize> = ev.kept.iter().map(|_| i).collect();
        on_ok(&indices, &ev, errs);
    }
    for (i, e) in failed {
        errs.push((e, data[i].1.clone(), data[i].2));
    }
}

/// Keep the updates of `data` whose rows (`rows[i]` is `data[i]`'s) pass
/// `eval`'s filters; a row that fails to evaluate becomes an error.
pub(crate) fn keep_passing<D: Clone, T: Clone>(
    eval: &RowEval,
    rows: &[&[u8]],
    data: &[(D, T, Diff)],
    oks: &mut Vec<(D, T, Diff)>,
    errs: &mut Vec<ErrRow<T>>,
) {
    for_each_evaluated(eval, rows, errs, data, |indices, _ev, _errs| {
        oks.extend(indices.iter().map(|i| data[*i].clone()));
    });
}

/// Evaluate `eval` over each batch of rows and encode its first output group
/// with `codec`. `emit` sees each row that passed the filters: its update,
/// its position in the evaluation, its encoded output and the evaluation.
pub(crate) fn map_encoded<'s, T, O, F>(
    input: Coll<'s, T>,
    name: &str,
    eval: RowEval,
    codec: RowCodec,
    mut emit: F,
) -> (Stream<'s, T, Vec<O>>, Errs<'s, T>)
where
    T: RenderTime,
    O: Clone + 'static,
    F: FnMut(&(Row, T, Diff), usize, Row, &Evaluated, &mut Vec<O>, &mut Vec<ErrRow<T>>) + 'static,
{
    map_encoded_with(
        input,
        name,
        eval,
        codec,
        |_| Ok(()),
        move |update, pos, row, ev, _, oks, errs| emit(update, pos, row, ev, oks, errs),
    )
}

/// [`map_encoded`], where `prepare` first derives what `emit` reads from
/// each evaluation as a whole (say, a column encoded at once rather than
/// row by row); an evaluation it fails makes errors of all its rows.
pub(crate) fn map_encoded_with<'s, T, O, P, G, F>(
    input: Coll<'s, T>,
    name: &str,
    eval: RowEval,
    codec: RowCodec,
    mut prepare: G,
    mut emit: F,
) -> (Stream<'s, T, Vec<O>>, Errs<'s, T>)
where
    T: RenderTime,
    O: Clone + 'static,
    G: FnMut(&Evaluated) -> Result<P, String> + 'static,
    F: FnMut(&(Row, T, Diff), usize, Row, &Evaluated, &P, &mut Vec<O>, &mut Vec<ErrRow<T>>) + 'static,
{
    batch_map(input, name, move |data: &mut Vec<(Row, T, Diff)>, oks, errs| {
        let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
        for_each_evaluated(
            &eval,
            &rows,
            errs,
            data,
            |indices, ev, errs| match encode_group(&codec, ev, 0)
                .and_then(|encoded| Ok((encoded, prepare(ev)?)))
            {
                Ok((encoded, prepared)) => {
                    for (pos, (i, row)) in indices.iter().zip(encoded).enumerate() {
                        emit(&data[*i], pos, row, ev, &prepared, oks, errs);
                    }
                }
                Err(e) => indices
                    .iter()
                    .for_each(|i| errs.push((e.clone(), data[*i].1.clone(), data[*i].2))),
            },
        );
    })
}

/// Key each row by `keys`. Rows with a NULL key are dropped unless
/// `nulls_equal` (a NULL key never matches in an ordinary join).
pub(crate) fn keyed<'s, T: RenderTime>(
    ok: Coll<'s, T>,
    schema: &DFSchema,
    keys: &[Expr],
    nulls_equal: bool,
    name: &str,
) -> Result<(Keyed<'s, T>, Errs<'s, T>), EngineError> {
    let key_codec = RowCodec::new(Arc::new(Schema::new(crate::eval::expr_fields(
        keys, schema, "k",
    )?)))?;
    if let Some(picker) = column_picker(keys, schema, &key_codec) {
        // Keys that are columns of the row: their bytes are the key.
        let (s, e) = batch_map(ok, name, move |data: &mut Vec<(Row, T, Diff)>, oks, errs| {
            let mut ends = Vec::new();
            for (r, t, d) in data {
                let mut key = Row::new();
                match picker.pick(r, &mut ends, &mut key) {
                    Some(()) if nulls_equal || !picker.any_null(r, &ends) => {
                        oks.push(((key, r.clone()), t.clone(), *d))
                    }
                    Some(()) => {}
                    None => errs.push((MISMATCHED_ROW.to_string(), t.clone(), *d)),
                }
            }
        });
        return Ok((s.as_collection(), e));
    }
    let eval = RowEval::new(schema, &[], &[keys])?;
    let (s, e) = map_encoded(
        ok,
        name,
        eval,
        key_codec,
        move |(r, t, d), pos, key, ev, oks, _| {
            if nulls_equal || !any_null(&ev.outputs[0], pos) {
                oks.push(((key, r.clone()), t.clone(), *d));
            }
        },
    );
    Ok((s.as_collection(), e))
}

/// The parameters of a join node.
pub(crate) struct JoinSpec<'a> {
    pub(crate) left_keys: &'a [Expr],
    pub(crate) right_keys: &'a [Expr],
    pub(crate) residual: Option<&'a Expr>,
    pub(crate) kind: JoinKind,
    pub(crate) nulls_equal: bool,
}

impl<'a> JoinSpec<'a> {
    /// The parameters of a [`PlanNode::Join`]; `None` for other nodes.
    pub(crate) fn of(node: &'a PlanNode) -> Option<Self> {
        match node {
            PlanNode::Join {
                left_keys,
                right_keys,
                residual,
                kind,
                nulls_equal,
                ..
            } => Some(JoinSpec {
                left_keys,
                right_keys,
                residual: residual.as_ref(),
                kind: *kind,
                nulls_equal: *nulls_equal,
            }),
            _ => None,
        }
    }
}

/// `rows` minus those of `rows` that appear in `hits` (multiplicities of
/// `rows` kept); or with `keep`, only those that appear.
fn semijoin_rows<'s, T: RenderTime>(rows: Coll<'s, T>, hits: Coll<'s, T>, keep: bool) -> Coll<'s, T> {
    let matched = rows.clone().map(|r| (r, ())).semijoin(hits).map(|(r, ())| r);
    if keep {
        matched
    } else {
        rows.concat(matched.negate())
    }
}

fn render_join<'s>(
    left: &Plan,
    right: &Plan,
    spec: &JoinSpec<'_>,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    if spec.kind == JoinKind::Inner
        && let Some(side) = ConstantSide::of(left, right, spec.left_keys, spec.right_keys)
    {
        let joined = left
            .schema
            .join(&right.schema)
            .map_err(|e| EngineError::Expression(e.to_string()))?;
        let other = render(side.other, scope, imports)?;
        return join_constant(other, side, spec.nulls_equal, &joined, spec.residual);
    }
    if let Some(leaders) = crate::leaders::of(left, right, spec, imports.logs)
        && let Some(rendered) = crate::leaders::render_leaders(&leaders, scope, imports)?
    {
        return Ok(rendered);
    }
    let inserts_only = monotonic(left, imports.logs) && monotonic(right, imports.logs);
    let l = render(left, scope, imports)?;
    let r = render(right, scope, imports)?;
    join_mapped(l, r, &left.schema, &right.schema, spec, None, inserts_only)
}

/// Join two rendered inputs whose rows have `left` and `right` schemas.
pub(crate) fn join_collections<'s, T: RenderTime>(
    l: (Coll<'s, T>, Errs<'s, T>),
    r: (Coll<'s, T>, Errs<'s, T>),
    left: &DFSchema,
    right: &DFSchema,
    spec: &JoinSpec<'_>,
) -> Result<(Coll<'s, T>, Errs<'s, T>), EngineError> {
    join_mapped(l, r, left, right, spec, None, false)
}

/// [`join_collections`]; for an inner join, `above` is what a
/// MapFilterProject over it makes of each match, done in the join, and
/// inputs that only insert (`inserts_only`) are kept in hash tables
/// ([`crate::insert_join`]) rather than arranged.
fn join_mapped<'s, T: RenderTime>(
    (lok, lerr): (Coll<'s, T>, Errs<'s, T>),
    (rok, rerr): (Coll<'s, T>, Errs<'s, T>),
    left: &DFSchema,
    right: &DFSchema,
    spec: &JoinSpec<'_>,
    above: Option<MatchMap>,
    inserts_only: bool,
) -> Result<(Coll<'s, T>, Errs<'s, T>), EngineError> {
    let (lk, lkerr) = keyed(lok.clone(), left, spec.left_keys, spec.nulls_equal, "JoinKeyLeft")?;
    let (rk, rkerr) = keyed(
        rok.clone(),
        right,
        spec.right_keys,
        spec.nulls_equal,
        "JoinKeyRight",
    )?;
    // Both sides arranged with rows laid out contiguously (as views'
    // outputs are), which joins hold the most of.
    let arrange = |lk: Keyed<'s, T>, rk: Keyed<'s, T>| {
        let la = lk.arrange_named::<KeyedBatcher<T>, KeyedSpine<T>>("JoinArrangeLeft", KeyedBatcher::new);
        let ra = rk.arrange_named::<KeyedBatcher<T>, KeyedSpine<T>>("JoinArrangeRight", KeyedBatcher::new);
        (measured(la, "JoinArrangeLeft"), measured(ra, "JoinArrangeRight"))
    };
    let mut errs = lerr.concat(rerr).concat(lkerr).concat(rkerr);
    let joined = left
        .join(right)
        .map_err(|e| EngineError::Expression(e.to_string()))?;
    if spec.kind == JoinKind::Inner {
        // Matches become rows in the join itself; a residual that must be
        // evaluated is evaluated over those rows.
        let (map, evaluated) = match above {
            Some(map) => (map, None),
            None => match MatchMap::residual(spec.residual, &joined) {
                Some(map) => (map, None),
                None => (MatchMap::default(), spec.residual),
            },
        };
        let (mut out, e) = if inserts_only {
            crate::insert_join::join_inserts(lk, rk, map)
        } else {
            let (la, ra) = arrange(lk, rk);
            map.join(la, ra)
        };
        errs = errs.concat(e);
        if let Some(expr) = evaluated {
            let eval = RowEval::new(&joined, std::slice::from_ref(expr), &[])?;
            let (s, e) = batch_map(
                out,
                "JoinResidual",
                move |data: &mut Vec<(Row, T, Diff)>, oks, errs| {
                    let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
                    keep_passing(&eval, &rows, data, oks, errs);
                },
            );
            errs = errs.concat(e);
            out = s.as_collection();
        }
        return Ok((out, errs));
    }
    let (la, ra) = arrange(lk, rk);
    let pairs = la.join_core(ra, |_k, l, r| Some((Row::from(l), Row::from(r))));
    let matched = match spec.residual {
        None => pairs,
        Some(expr) => {
            let eval = RowEval::new(&joined, std::slice::from_ref(expr), &[])?;
            let (s, e) = batch_map(
                pairs,
                "JoinResidual",
                move |data: &mut Vec<((Row, Row), T, Diff)>, oks, errs| {
                    let joined: Vec<Row> = data.iter().map(|((l, r), _, _)| Row::concat(l, r)).collect();
                    let rows: Vec<&[u8]> = joined.iter().map(|r| r.as_slice()).collect();
                    keep_passing(&eval, &rows, data, oks, errs);
                },
            );
            errs = errs.concat(e);
            s.as_collection()
        }
    };
    let left_hits = || distinct(matched.clone().map(|(l, _)| l), "JoinHitsLeft");
    let right_hits = || distinct(matched.clone().map(|(_, r)| r), "JoinHitsRight");
    let out = match spec.kind {
        JoinKind::LeftSemi => semijoin_rows(lok, left_hits(), true),
        JoinKind::LeftAnti => semijoin_rows(lok, left_hits(), false),
        JoinKind::RightSemi => semijoin_rows(rok, right_hits(), true),
        JoinKind::RightAnti => semijoin_rows(rok, right_hits(), false),
        JoinKind::LeftAntiNullAware => {
            // `x NOT IN (S)`: true when S is empty; otherwise NULL (so the
            // row goes) when x is NULL or S holds a NULL; otherwise whether x
            // is missing from S.
            let nonnull_left = lk_rows(&lok, left, spec.left_keys)?;
            let anti = semijoin_rows(nonnull_left, left_hits(), false);
            let right_nulls = distinct(
                null_key_rows(&rok, right, spec.right_keys)?.map(|_| ()),
                "JoinRightNulls",
            );
            let blocked = anti
                .clone()
                .map(|r| ((), r))
                .semijoin(right_nulls)
                .map(|((), r)| r);
            let right_nonempty = distinct(rok.map(|_| ()), "JoinRightNonEmpty");
            let null_left = null_key_rows(&lok, left, spec.left_keys)?;
            let null_blocked = null_left
                .clone()
                .map(|r| ((), r))
                .semijoin(right_nonempty)
                .map(|((), r)| r);
            anti.concat(blocked.negate())
                .concat(null_left)
                .concat(null_blocked.negate())
        }
        JoinKind::Inner | JoinKind::LeftOuter | JoinKind::RightOuter | JoinKind::FullOuter => {
            let mut out = matched.clone().map(|(l, r)| Row::concat(&l, &r));
            if matches!(spec.kind, JoinKind::LeftOuter | JoinKind::FullOuter) {
                let pad = RowCodec::new(arrow_schema(right))?.null_row()?;
                let unmatched = semijoin_rows(lok, left_hits(), false);
                out = out.concat(unmatched.map(move |l| Row::concat(&l, &pad)));
            }
            if matches!(spec.kind, JoinKind::RightOuter | JoinKind::FullOuter) {
                let pad = RowCodec::new(arrow_schema(left))?.null_row()?;
                let unmatched = semijoin_rows(rok, right_hits(), false);
                out = out.concat(unmatched.map(move |r| Row::concat(&pad, &r)));
            }
            out
        }
    };
    Ok((out, errs))
}

/// The rows of `rows` whose `keys` are all non-NULL.
fn lk_rows<'s, T: RenderTime>(
    rows: &Coll<'s, T>,
    schema: &DFSchema,
    keys: &[Expr],
) -> Result<Coll<'s, T>, EngineError> {
    null_filtered(rows, schema, keys, false)
}

/// The rows of `rows` with a NULL in one of `keys`.
fn null_key_rows<'s, T: RenderTime>(
    rows: &Coll<'s, T>,
    schema: &DFSchema,
    keys: &[Expr],
) -> Result<Coll<'s, T>, EngineError> {
    null_filtered(rows, schema, keys, true)
}

fn null_filtered<'s, T: RenderTime>(
    rows: &Coll<'s, T>,
    schema: &DFSchema,
    keys: &[Expr],
    want_null: bool,
) -> Result<Coll<'s, T>, EngineError> {
    let eval = RowEval::new(schema, &[], &[keys])?;
    let (s, _errs) = batch_map(
        rows.clone(),
        "JoinNullKeys",
        move |data: &mut Vec<(Row, T, Diff)>, oks, errs| {
            let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
            for_each_evaluated(&eval, &rows, errs, data, |indices, ev, _errs| {
                for (pos, i) in indices.iter().enumerate() {
                    if any_null(&ev.outputs[0], pos) == want_null {
                        oks.push(data[*i].clone());
                    }
                }
            });
        },
    );
    // Key errors are already reported by the keyed side of the join.
    Ok(s.as_collection())
}

/// Emit, in `input`'s order (rows sorted ascending), the occurrences after
/// the first `skip`, at most `limit` of them.
fn take_sorted<V: Clone>(
    input: &[(&V, Diff)],
    skip: usize,
    limit: Option<usize>,
    output: &mut Vec<(V, Diff)>,
) {
    let mut skipped = 0;
    let mut taken = 0;
    for (v, count) in input {
        let mut count = (*count).max(0) as usize;
        let s = (skip - skipped).min(count);
        skipped += s;
        count -= s;
        if let Some(l) = limit {
            count = count.min(l - taken);
        }
        if count > 0 {
            output.push(((*v).clone(), count as Diff));
            taken += count;
        }
        if limit.is_some_and(|l| taken >= l) {
            break;
        }
    }
}

/// `ORDER BY ... LIMIT`: rows keyed by their encoded sort key, then a top-k
/// in 256 hash buckets, then a top-k of the buckets' winners, so a change
/// re-reads one bucket and the winners rather than the whole input.
fn render_topk<'s>(
    ok: Coll<'s>,
    schema: &DFSchema,
    order: &[datafusion::logical_expr::SortExpr],
    limit: Option<usize>,
    offset: usize,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    let exprs: Vec<Expr> = order.iter().map(|s| s.expr.clone()).collect();
    let eval = RowEval::new(schema, &[], &[&exprs])?;
    let fields = crate::eval::expr_fields(&exprs, schema, "o")?;
    let options = order
        .iter()
        .map(|s| arrow::compute::SortOptions {
            descending: !s.asc,
            nulls_first: s.nulls_first,
        })
        .collect();
    let key_codec = RowCodec::with_options(Arc::new(Schema::new(fields)), options)?;
    let (keyed, errs) = map_encoded(
        ok,
        "TopKSortKeys",
        eval,
        key_codec,
        |(r, t, d), _, key, _, oks, _| oks.push(((key, r.clone()), *t, *d)),
    );
    let keyed: Keyed<'s> = keyed.as_collection();
    let keep = limit.map(|l| l + offset);
    let top = keyed
        .map(|(sort_key, row)| {
            use differential_dataflow::Hashable;
            (row.hashed() % 256, (sort_key, row))
        })
        .reduce_named(
            "TopKBuckets",
            move |_bucket, input: &[(&(Row, Row), Diff)], output: &mut Vec<((Row, Row), Diff)>| {
                take_sorted(input, 0, keep, output)
            },
        )
        .map(|(_bucket, v)| ((), v))
        .reduce_named(
            "TopK",
            move |_unit, input: &[(&(Row, Row), Diff)], output: &mut Vec<((Row, Row), Diff)>| {
                take_sorted(input, offset, limit, output)
            },
        )
        .map(|((), (_sort_key, row))| row);
    Ok((top, errs))
}

fn render_reduce<'s>(
    plan: &Plan,
    input: &Plan,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<(Coll<'s>, Errs<'s>), EngineError> {
    if let Some(fused) = crate::window_reduce::fusable(input, group_keys) {
        if let Some(sessions) = crate::sessions::of(&fused, group_keys, aggregates, imports.logs)
            && let Some(rendered) = crate::sessions::render_sessions(sessions, scope, imports)?
        {
            return Ok(rendered);
        }
        return crate::window_reduce::render_fused(plan, fused, group_keys, aggregates, scope, imports);
    }
    let (ok, err) = render(input, scope, imports)?;
    // Each input row becomes its group key and an argument row holding the
    // inputs of every aggregate.
    let (args, folder) = GroupFolder::new(aggregates, &input.schema)?;
    let folder = Arc::new(folder);
    let eval = RowEval::new(&input.schema, &[], &[group_keys, &args])?;
    let n_keys = group_keys.len();
    let key_schema = Arc::new(Schema::new(plan.schema.as_arrow().fields()[..n_keys].to_vec()));
    let key_codec = RowCodec::new(key_schema)?;
    let agg_codec = Arc::new(RowCodec::new(aggregate_schema(aggregates))?);
    let aggs: Arc<Vec<AggregateExpr>> = Arc::new(aggregates.to_vec());
    let accumulable = aggregates.iter().all(|a| a.func.is_accumulable());

    let extremes_only = !accumulable
        && aggregates
            .iter()
            .all(|a| a.func != weir_sql::AggregateFunc::General);
    let (results, errs): (VecCollection<'s, Time, Result<Row, String>, Diff>, Errs<'s>) = if extremes_only {
        crate::minmax::reduce(
            ok,
            &input.schema,
            group_keys,
            aggregates,
            &key_codec,
            agg_codec.clone(),
            Changes::of(input, group_keys, aggregates, imports.logs),
        )?
    } else if accumulable {
        let acc = Accumulator::new(aggregates);
        let distinct = crate::distinct_count::contributions(
            ok.clone(),
            &input.schema,
            group_keys,
            aggregates,
            &key_codec,
        )?;
        let (contributions, e) = map_encoded(
            ok,
            "ReduceAccumulate",
            eval,
            key_codec,
            move |(_, t, d), pos, key, ev, oks, errs| match acc.contribution(&ev.outputs[1], pos, *d) {
                Ok(c) => oks.push((key, *t, c)),
                Err(e) => errs.push((e, *t, *d)),
            },
        );
        let mut totals: VecCollection<'s, Time, Row, Accums> =
            combine(contributions.as_collection(), "ReduceCombine");
        if let Some(distinct) = distinct {
            totals = totals.concat(distinct);
        }
        let aggs = aggs.clone();
        let agg_codec = agg_codec.clone();
        // An arrangement, not a keyed state (`crate::running`): with many
        // groups, the arrangement's sorted merges find them faster than a
        // hash map's scattered probes (a hash map of Nexmark q5's counts
        // per auction and window took 60% more CPU).
        let arranged = measured(
            totals.arrange_by_self_named("Arrange: ReduceTotals"),
            "Arrange: ReduceTotals",
        );
        let results = arranged
            .count_total()
            .flat_map(move |(key, accums): (Row, Accums)| {
                if accums.rows <= 0 {
                    return None;
                }
                Some(finalize(&aggs, &accums, &[]).and_then(|cols| {
                    let agg_row = agg_codec.encode(&cols, 1).map_err(|e| e.to_string())?.remove(0);
                    Ok(Row::concat(&key, &agg_row))
                }))
            });
        (results, e)
    } else {
        let arg_codec = Arc::new(RowCodec::new(folder.arg_schema.clone())?);
        let arg_codec2 = arg_codec.clone();
        let (pairs, e) = batch_map(
            ok,
            "ReduceKeyValues",
            move |data: &mut Vec<(Row, Time, Diff)>, oks, errs| {
                let rows: Vec<&[u8]> = data.iter().map(|(r, _, _)| r.as_slice()).collect();
                for_each_evaluated(&eval, &rows, errs, data, |indices, ev, errs| {
                    match (encode_group(&key_codec, ev, 0), encode_group(&arg_codec, ev, 1)) {
                        (Ok(keys), Ok(vals)) => {
                            for ((i, k), v) in indices.iter().zip(keys).zip(vals) {
                                oks.push(((k, v), data[*i].1, data[*i].2));
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => indices
                            .iter()
                            .for_each(|i| errs.push((e.clone(), data[*i].1, data[*i].2))),
                    }
                });
            },
        );
        let agg_codec = agg_codec.clone();
        let folder = folder.clone();
        let pairs: VecCollection<'s, Time, (Row, Row), Diff> = pairs.as_collection();
        let results = reduce_rows(
            pairs,
            "ReduceHierarchical",
            move |_key: &[u8], input: &[(&[u8], Diff)], output: &mut Vec<(Result<Row, String>, Diff)>| {
                let res = arg_codec2
                    .decode(input.iter().map(|(r, _)| *r))
                    .map_err(|e| e.to_string())
                    .and_then(|batch| {
                        let counts: Vec<Diff> = input.iter().map(|(_, c)| *c).collect();
                        folder.values_row(&batch, &counts, &agg_codec)
                    });
                output.push((res, 1));
            },
        )
        .map(|(key, res)| res.map(|agg_row| Row::concat(&key, &agg_row)));
        (results, e)
    };
    let (rows, eval_errs): (RowStream<'s>, ErrStream<'s>) = results.inner.ok_err(|(r, t, d)| match r {
        Ok(r) => Ok((r, t, d)),
        Err(e) => Err((e, t, d)),
    });
    let mut rows = rows.as_collection();
    if n_keys == 0 {
        // A global aggregate has one row even over empty input.
        let empty = RecordBatch::new_empty(folder.arg_schema.clone());
        let default = folder
            .values_row(&empty, &[], &agg_codec)
            .map_err(EngineError::Encoding)?;
        let d2 = default.clone();
        let defaults = if scope.index() == 0 {
            vec![(default, 0, 1)]
        } else {
            vec![]
        };
        let present = rows.clone().map(move |_| d2.clone()).negate();
        rows = rows
            .concat(defaults.to_stream(scope).as_collection())
            .concat(present);
    }
    Ok((rows, err.concat(errs).concat(eval_errs.as_collection())))
}
