//! Session windows over rows that are only inserted, kept as each
//! partition's sessions rather than re-read.
//!
//! SQL without a `SESSION` window numbers sessions with two window
//! functions: a row opens a session when its partition's previous time
//! (`lag(t) OVER (PARTITION BY p ORDER BY t)`) is more than a gap before
//! its own, a running `sum` of those openings numbers the sessions, and a
//! `GROUP BY p, session` folds each one (Nexmark q11, bids per bidder's
//! session). [`crate::window_reduce`] evaluates that chain per partition,
//! reading the whole partition again at each change. But a partition's
//! sessions are the runs of its times whose neighbours lie within the gap,
//! so for inserted rows they are a summary that merges: a new time joins
//! the session it falls within the gap of (bridging two where it falls
//! within the gap of both) or opens one of its own. One small state per
//! partition ([`Sessions`]: each session's first and last time and its row
//! count, in time order) answers `count`, `min` and `max` of the time per
//! session, and the session's number is its position. Times that come in
//! order change only the last session, or add one after it. Rows of NULL
//! time are counted beside the sessions and numbered as the SQL numbers
//! them ([`groups`]).
//!
//! This module owns recognising that chain ([`of`]) and the state, and
//! reads nothing of a row but its partition and time; the per-key,
//! per-time operator is [`crate::running`]'s, the chain's recognition as
//! a per-partition reduction [`crate::window_reduce`]'s.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Case, NullTreatment, WindowFunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, WindowFrameBound, WindowFrameUnits};
use differential_dataflow::AsCollection;
use differential_dataflow::difference::{IsZero, Semigroup};
use smallvec::SmallVec;
use timely::dataflow::Scope;
use weir_sql::{AggregateExpr, AggregateFunc, GlobalId, Plan, PlanNode};

use crate::eval::{column_index, own_picker, strip_alias};
use crate::log::TableLog;
use crate::render::{Coll, Errs, Imports, MISMATCHED_ROW, batch_map, monotonic, render};
use crate::row::Row;
use crate::running::{RunningState, derive_changes};
use crate::window_reduce::Fusable;
use crate::{Diff, EngineError, Time};

/// One session: its first and last time (as 64-bit ticks) and its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Span {
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) rows: i64,
}

/// A partition's sessions in time order, each more than `gap` ticks after
/// the one before, and its rows of NULL time. Neither: no state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sessions {
    /// The greatest distance between neighbouring times of one session;
    /// the same in every state of an operator (adding needs it).
    gap: i64,
    pub(crate) spans: SmallVec<[Span; 1]>,
    nulls: i64,
}

impl Sessions {
    /// Adds `span`, merging it with every session it comes within the gap of.
    fn add(&mut self, span: Span) {
        let gap = i128::from(self.gap);
        let near = |a: i64, b: i64| i128::from(b) - i128::from(a) <= gap;
        let spans = &mut self.spans;
        // Sessions are disjoint and ordered: the one before `span` is the
        // last to start no later, and those after it start later.
        let after = spans.partition_point(|s| s.first <= span.first);
        let mut merged = span;
        let mut lo = after;
        if lo > 0 && near(spans[lo - 1].last, span.first) {
            lo -= 1;
            merged = join(spans[lo], merged);
        }
        let mut hi = after;
        while hi < spans.len() && near(merged.last, spans[hi].first) {
            merged = join(merged, spans[hi]);
            hi += 1;
        }
        match hi - lo {
            0 => spans.insert(lo, merged),
            1 => spans[lo] = merged,
            _ => {
                spans[lo] = merged;
                spans.drain(lo + 1..hi);
            }
        }
    }
}

/// One session of the rows of two that meet.
fn join(a: Span, b: Span) -> Span {
    Span {
        first: a.first.min(b.first),
        last: a.last.max(b.last),
        rows: a.rows + b.rows,
    }
}

impl IsZero for Sessions {
    fn is_zero(&self) -> bool {
        self.spans.is_empty() && self.nulls == 0
    }
}

impl Semigroup for Sessions {
    fn plus_equals(&mut self, rhs: &Self) {
        for span in &rhs.spans {
            self.add(*span);
        }
        self.nulls += rhs.nulls;
    }
}

impl RunningState for Sessions {
    fn plus_owned(&mut self, diff: Self) {
        if self.is_zero() {
            *self = diff;
        } else {
            self.plus_equals(&diff);
        }
    }
}

/// What a column of the chain holds, as far as sessions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meaning {
    /// The bottom's partition column of this index.
    Partition(usize),
    /// The time the sessions are drawn over.
    Time,
    /// The partition's previous time.
    Lag,
    /// Whether the row opens a session.
    Opens,
    /// The session's number.
    Session,
    /// Anything else: not read by the reduction.
    Other,
}

/// A reduction of a [`Fusable`] chain that is a session window.
pub(crate) struct SessionWindow<'a> {
    /// The rows, only ever inserted.
    bottom: &'a Plan,
    /// The reduction's group keys that are partition columns (as columns
    /// of `bottom`), in the reduction's order, and where among them the
    /// session number goes.
    keys: Vec<Expr>,
    session_at: usize,
    time: Expr,
    gap: i64,
    form: Form,
    aggregates: Vec<Aggregate>,
}

/// What an aggregate of a session reads.
#[derive(Clone, Copy, Debug)]
enum Aggregate {
    /// `count(*)`.
    Rows,
    /// `count(t)`.
    Times,
    First,
    Last,
}

/// How the condition opening a session reads a NULL, which a row's
/// previous time is for the first row, and a row's own time may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `CASE WHEN <continues> THEN 0 ELSE 1 END`: NULL opens a session.
    Continues,
    /// `CASE WHEN <opens> THEN 1 ELSE 0 END`: NULL opens none, so the
    /// first session is numbered 0.
    Opens,
    /// `CASE WHEN lag IS NULL OR <opens> THEN 1 ELSE 0 END`: a NULL
    /// previous time opens a session, a NULL time after a time none.
    OpensAfterNull,
}

impl Form {
    fn first_number(self) -> i64 {
        match self {
            Form::Opens => 0,
            Form::Continues | Form::OpensAfterNull => 1,
        }
    }

    /// What `nulls` rows of NULL time add to the running sum after
    /// `sessions` sessions of times. They sort last, each after the
    /// previous: the first one's previous time is the last time, if any,
    /// the others' NULL.
    fn null_openings(self, nulls: i64, sessions: usize) -> i64 {
        match self {
            Form::Continues => nulls,
            Form::Opens => 0,
            Form::OpensAfterNull if sessions > 0 => nulls - 1,
            Form::OpensAfterNull => nulls,
        }
    }
}

/// One group of the reduction: a session's number and its aggregates'
/// inputs (`times` counts the rows whose time is not NULL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    number: i64,
    rows: i64,
    times: i64,
    first: Option<i64>,
    last: Option<i64>,
}

/// A partition's groups as the SQL makes them: one per session, numbered
/// on from the form's first number; and the rows of NULL time, which are
/// peers in the running sum and so share one number, that of the sum
/// after them: a group of their own, or the last session's where they
/// open none.
fn groups(state: &Sessions, form: Form, out: &mut Vec<Group>) {
    out.clear();
    let first = form.first_number();
    out.extend(state.spans.iter().enumerate().map(|(i, s)| Group {
        number: first + i as i64,
        rows: s.rows,
        times: s.rows,
        first: Some(s.first),
        last: Some(s.last),
    }));
    if state.nulls > 0 {
        let opened = form.null_openings(state.nulls, state.spans.len());
        match out.last_mut() {
            Some(last) if opened == 0 => last.rows += state.nulls,
            last => {
                let sum = last.map_or(0, |g| g.number);
                out.push(Group {
                    number: sum + opened,
                    rows: state.nulls,
                    times: 0,
                    first: None,
                    last: None,
                });
            }
        }
    }
}

/// `fused`, reduced by `group_keys` into `aggregates`, if it numbers
/// sessions of a partition's rows by a gap in a time column (see the
/// module comment) and folds each into counts, or the first or last time.
/// The time must be a 64-bit integer or a timestamp ordered ascending with
/// NULLs last, the sum's frame a `RANGE` one (rows of NULL time are then
/// peers), and the rows must only ever be inserted.
pub(crate) fn of<'a>(
    fused: &Fusable<'a>,
    group_keys: &[Expr],
    aggregates: &[AggregateExpr],
    logs: &HashMap<GlobalId, Rc<RefCell<TableLog>>>,
) -> Option<SessionWindow<'a>> {
    let bottom = fused.bottom;
    if !monotonic(bottom, logs) {
        return None;
    }
    let partition: Vec<usize> = fused
        .partition_by
        .iter()
        .map(|e| column_index(e, &bottom.schema))
        .collect::<Option<_>>()?;
    // Sessions of all rows at once are one partition's: left to the
    // per-partition reduce, whose key is then empty.
    if partition.is_empty() {
        return None;
    }
    let mut meaning: Vec<Meaning> = (0..bottom.schema.fields().len())
        .map(|i| match partition.contains(&i) {
            true => Meaning::Partition(i),
            false => Meaning::Other,
        })
        .collect();
    let mut time: Option<(usize, Ticks)> = None;
    let mut opens: Option<(i64, Form)> = None;
    let mut numbered = false;
    for stage in &fused.stages {
        match &stage.node {
            PlanNode::Window {
                input,
                partition_by,
                functions,
            } => {
                if partition_by.len() != partition.len() || functions.len() != 1 {
                    return None;
                }
                let f = window_function(&functions[0])?;
                let ordered_by = match &f.params.order_by[..] {
                    [s] if s.asc && !s.nulls_first => column_index(&s.expr, &input.schema)?,
                    _ => return None,
                };
                let args: Vec<Option<usize>> = f
                    .params
                    .args
                    .iter()
                    .map(|a| column_index(a, &input.schema))
                    .collect();
                // `IGNORE NULLS` would give a NULL time's row the last time
                // before it, which the NULLs' numbering below does not read.
                let ignores_nulls = f.params.null_treatment == Some(NullTreatment::IgnoreNulls);
                if f.params.filter.is_some() || f.params.distinct || ignores_nulls {
                    return None;
                }
                let name = f.fun.name();
                if time.is_none() && name == "lag" && args.len() == 1 && args[0] == Some(ordered_by) {
                    // The lowest window: its order is the time.
                    if meaning[ordered_by] != Meaning::Other {
                        return None;
                    }
                    let field = bottom.schema.field(ordered_by);
                    time = Some((ordered_by, Ticks::of(field.data_type())?));
                    meaning[ordered_by] = Meaning::Time;
                    meaning.push(Meaning::Lag);
                } else if opens.is_some()
                    && !numbered
                    && name == "sum"
                    && args.len() == 1
                    && args[0].is_some_and(|a| meaning[a] == Meaning::Opens)
                    && meaning[ordered_by] == Meaning::Time
                    && f.params.window_frame.units == WindowFrameUnits::Range
                    && f.params.window_frame.start_bound.is_unbounded()
                    && f.params.window_frame.end_bound == WindowFrameBound::CurrentRow
                    && stage.schema.field(meaning.len()).data_type() == &DataType::Int64
                {
                    numbered = true;
                    meaning.push(Meaning::Session);
                } else {
                    return None;
                }
            }
            PlanNode::MapFilterProject {
                input,
                filters,
                projection,
            } if filters.is_empty() => {
                let ticks = time.map(|(_, t)| t);
                meaning = projection
                    .iter()
                    .map(|e| match column_index(e, &input.schema) {
                        Some(i) => meaning[i],
                        None => match ticks.and_then(|t| opening(e, &input.schema, &meaning, t)) {
                            Some(o) if opens.is_none_or(|p| p == o) => {
                                opens = Some(o);
                                Meaning::Opens
                            }
                            _ => Meaning::Other,
                        },
                    })
                    .collect();
            }
            _ => return None,
        }
    }
    let ((time_col, _), (gap, form)) = (time?, opens?);
    if !numbered {
        return None;
    }
    let input = &fused.stages.last()?.schema;
    let mut keys = Vec::new();
    let mut session_at = None;
    for k in group_keys {
        match meaning[column_index(k, input)?] {
            Meaning::Partition(i) if !keys.contains(&i) => keys.push(i),
            Meaning::Session if session_at.is_none() => session_at = Some(keys.len()),
            _ => return None,
        }
    }
    if keys.len() != partition.len() {
        return None;
    }
    let of_time = |a: &AggregateExpr| {
        a.arg
            .as_ref()
            .and_then(|e| column_index(e, input))
            .is_some_and(|i| meaning[i] == Meaning::Time)
    };
    let aggregates = aggregates
        .iter()
        .map(|a| {
            if a.filter.is_some() || a.distinct {
                return None;
            }
            match a.func {
                AggregateFunc::CountStar => Some(Aggregate::Rows),
                AggregateFunc::Count if of_time(a) => Some(Aggregate::Times),
                AggregateFunc::Min if of_time(a) => Some(Aggregate::First),
                AggregateFunc::Max if of_time(a) => Some(Aggregate::Last),
                _ => None,
            }
        })
        .collect::<Option<Vec<_>>>()?;
    let column = |i: usize| Expr::Column(bottom.schema.columns()[i].clone());
    Some(SessionWindow {
        bottom,
        keys: keys.into_iter().map(column).collect(),
        session_at: session_at?,
        time: column(time_col),
        gap,
        form,
        aggregates,
    })
}

/// `e`'s window function, under any alias.
fn window_function(e: &Expr) -> Option<&WindowFunction> {
    match strip_alias(e) {
        Expr::WindowFunction(f) => Some(f),
        _ => None,
    }
}

/// How a time column's type counts ticks, and so reads a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ticks {
    Integer,
    /// Nanoseconds per tick, and whether days are always 86,400 s (no
    /// time zone).
    Timestamp {
        nanos: i64,
        fixed_days: bool,
    },
}

impl Ticks {
    fn of(t: &DataType) -> Option<Ticks> {
        let nanos = match t {
            DataType::Int64 => return Some(Ticks::Integer),
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1,
            _ => return None,
        };
        let fixed_days = matches!(t, DataType::Timestamp(_, None));
        Some(Ticks::Timestamp { nanos, fixed_days })
    }

    /// A constant as ticks: an integer for integer times, an interval of
    /// whole ticks without months (nor days where a zone makes them vary)
    /// for timestamps.
    fn constant(self, v: &ScalarValue) -> Option<i128> {
        match (self, v) {
            (Ticks::Integer, v) if v.data_type().is_integer() => {
                v.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                    ScalarValue::Int64(Some(i)) => Some(i128::from(i)),
                    _ => None,
                })
            }
            (Ticks::Timestamp { nanos, fixed_days }, ScalarValue::IntervalMonthDayNano(Some(iv))) => {
                let IntervalMonthDayNano {
                    months,
                    days,
                    nanoseconds,
                } = *iv;
                if months != 0 || (days != 0 && !fixed_days) {
                    return None;
                }
                let total = i128::from(days) * 86_400_000_000_000 + i128::from(nanoseconds);
                (total % i128::from(nanos) == 0).then(|| total / i128::from(nanos))
            }
            _ => None,
        }
    }
}

/// A sum of the time, the previous time and constants, each counted with
/// its sign.
#[derive(Clone, Copy, Debug, Default)]
struct Linear {
    time: i32,
    lag: i32,
    constant: i128,
}

impl Linear {
    fn of(e: &Expr, schema: &DFSchema, meaning: &[Meaning], ticks: Ticks) -> Option<Linear> {
        match e {
            Expr::Alias(a) => Linear::of(&a.expr, schema, meaning, ticks),
            Expr::Column(_) => match meaning[column_index(e, schema)?] {
                Meaning::Time => Some(Linear {
                    time: 1,
                    ..Linear::default()
                }),
                Meaning::Lag => Some(Linear {
                    lag: 1,
                    ..Linear::default()
                }),
                _ => None,
            },
            Expr::Literal(v, _) => Some(Linear {
                constant: ticks.constant(v)?,
                ..Linear::default()
            }),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (l, r) = (
                    Linear::of(left, schema, meaning, ticks)?,
                    Linear::of(right, schema, meaning, ticks)?,
                );
                let sign = match op {
                    Operator::Plus => 1,
                    Operator::Minus => -1,
                    _ => return None,
                };
                let sum = Linear {
                    time: l.time + sign * r.time,
                    lag: l.lag + sign * r.lag,
                    constant: l.constant + i128::from(sign) * r.constant,
                };
                // A timestamp minus a timestamp is an interval whose
                // comparison is not the ticks': only shifts by constants.
                let shift_only = matches!(ticks, Ticks::Timestamp { .. });
                (!shift_only || sum.time.abs() + sum.lag.abs() <= 1).then_some(sum)
            }
            _ => None,
        }
    }
}

/// Whether `e` says a row opens a session, as its gap and [`Form`]: `CASE WHEN <continues> THEN 0 ELSE 1 END` or `CASE WHEN
/// [lag IS NULL OR] <opens> THEN 1 ELSE 0 END`, where the condition
/// compares the time's distance from the previous time with a constant,
/// written as any sum of the two and constants (`lag >= t - INTERVAL '10
/// seconds'`). The gap is the greatest distance that continues a session;
/// it must be at least 0, so that rows tied in time share a session.
fn opening(e: &Expr, schema: &DFSchema, meaning: &[Meaning], ticks: Ticks) -> Option<(i64, Form)> {
    let Expr::Case(Case {
        expr: None,
        when_then_expr,
        else_expr: Some(otherwise),
    }) = strip_alias(e)
    else {
        return None;
    };
    let [(when, then)] = &when_then_expr[..] else {
        return None;
    };
    let flag = |e: &Expr| match strip_alias(e) {
        Expr::Literal(v, _) if v.data_type().is_integer() => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(b @ (0 | 1))) => Some(b),
            _ => None,
        },
        _ => None,
    };
    let opens_when_true = match (flag(then)?, flag(otherwise)?) {
        (0, 1) => false,
        (1, 0) => true,
        _ => return None,
    };
    let is_lag_null = |e: &Expr| match strip_alias(e) {
        Expr::IsNull(c) => column_index(c, schema).is_some_and(|i| meaning[i] == Meaning::Lag),
        _ => false,
    };
    // `lag IS NULL OR cond` (either way round), only where true opens.
    let (condition, form) = match strip_alias(when) {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) if opens_when_true => match (is_lag_null(left), is_lag_null(right)) {
            (true, false) => (right.as_ref(), Form::OpensAfterNull),
            (false, true) => (left.as_ref(), Form::OpensAfterNull),
            _ => return None,
        },
        c if opens_when_true => (c, Form::Opens),
        c => (c, Form::Continues),
    };
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = strip_alias(condition) else {
        return None;
    };
    let (l, r) = (
        Linear::of(left, schema, meaning, ticks)?,
        Linear::of(right, schema, meaning, ticks)?,
    );
    // left - right = s * (time - lag) + k, compared with 0.
    let (s, k) = (l.time - r.time, l.constant - r.constant);
    if l.lag - r.lag != -s || s.abs() != 1 {
        return None;
    }
    // As `distance op c`.
    let (op, c) = match s {
        1 => (*op, -k),
        _ => (op.swap()?, k),
    };
    let (continues_when_true, gap) = match op {
        Operator::LtEq => (true, c),
        Operator::Lt => (true, c - 1),
        Operator::Gt => (false, c),
        Operator::GtEq => (false, c - 1),
        _ => return None,
    };
    if continues_when_true == opens_when_true || gap < 0 {
        return None;
    }
    Some((i64::try_from(gap).ok()?, form))
}

/// A 64-bit value or NULL as `arrow-row` encodes it, ascending with
/// NULLs first (the default).
fn encode_i64(v: Option<i64>, out: &mut Row) {
    match v {
        Some(v) => {
            out.extend_from_slice(&[1]);
            out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        }
        None => out.extend_from_slice(&[0; 9]),
    }
}

/// The 64-bit value or NULL that `arrow-row` encoded as `bytes`; `None`
/// for bytes that are neither.
fn decode_i64(bytes: &[u8]) -> Option<Option<i64>> {
    match bytes {
        [1, rest @ ..] => Some(Some(
            (u64::from_be_bytes(rest.try_into().ok()?) ^ (1 << 63)) as i64,
        )),
        [0, rest @ ..] if rest.len() == 8 => Some(None),
        _ => None,
    }
}

/// Render `window`: each inserted row keyed by its partition, with its
/// time as a session of its own. `None` where the columns cannot be
/// picked out of the rows.
pub(crate) fn render_sessions<'s>(
    window: SessionWindow<'_>,
    scope: Scope<'s, Time>,
    imports: &mut Imports<'_, 's>,
) -> Result<Option<(Coll<'s>, Errs<'s>)>, EngineError> {
    let schema = &window.bottom.schema;
    // Columns that cannot be picked leave the chain to the per-partition
    // reduce, whatever the reason.
    let picked = |exprs: &[Expr]| own_picker(exprs, schema).ok().flatten();
    let (Some((keys, key_codec)), Some((time, _))) =
        (picked(&window.keys), picked(std::slice::from_ref(&window.time)))
    else {
        return Ok(None);
    };
    let Some(layout) = key_codec.layout() else {
        return Ok(None);
    };
    let (ok, err) = render(window.bottom, scope, imports)?;
    let gap = window.gap;
    let (states, errs) = batch_map(
        ok,
        "SessionsInserted",
        move |data: &mut Vec<(Row, Time, Diff)>, oks, errs| {
            let (mut ends, mut t_bytes) = (Vec::new(), Row::new());
            for (r, t, d) in data.drain(..) {
                let mut key = Row::new();
                t_bytes.clear();
                let picked = keys.pick(&r, &mut ends, &mut key).and_then(|()| {
                    time.pick(&r, &mut ends, &mut t_bytes)?;
                    decode_i64(t_bytes.as_slice())
                });
                // The rows are only inserted (see `of`).
                let state = match picked {
                    Some(Some(at)) if d > 0 => Sessions {
                        gap,
                        spans: smallvec::smallvec![Span {
                            first: at,
                            last: at,
                            rows: d as i64,
                        }],
                        nulls: 0,
                    },
                    Some(None) if d > 0 => Sessions {
                        gap,
                        spans: SmallVec::new(),
                        nulls: d as i64,
                    },
                    _ => {
                        errs.push((MISMATCHED_ROW.to_string(), t, d));
                        continue;
                    }
                };
                oks.push((key, t, state));
            }
        },
    );
    let (session_at, form, aggregates) = (window.session_at, window.form, window.aggregates);
    // Each change's groups before and after, in buffers kept for the next.
    let (mut was, mut now) = (Vec::new(), Vec::new());
    let rows = derive_changes(
        states.as_collection(),
        "SessionWindows",
        move |key: &Row, before, after, out| {
            let mut ends = Vec::new();
            // Each key was picked in this layout.
            let split = match session_at {
                0 => 0,
                n => layout
                    .ends(key.as_slice(), n, &mut ends)
                    .map_or(key.as_slice().len(), |()| ends[n - 1]),
            };
            let row = |g: &Group| {
                let mut row = Row::with_capacity(key.as_slice().len() + 9 * (1 + aggregates.len()));
                row.extend_from_slice(&key.as_slice()[..split]);
                encode_i64(Some(g.number), &mut row);
                row.extend_from_slice(&key.as_slice()[split..]);
                for a in &aggregates {
                    let v = match a {
                        Aggregate::Rows => Some(g.rows),
                        Aggregate::Times => Some(g.times),
                        Aggregate::First => g.first,
                        Aggregate::Last => g.last,
                    };
                    encode_i64(v, &mut row);
                }
                row
            };
            match before {
                Some(b) => groups(b, form, &mut was),
                None => was.clear(),
            }
            groups(after, form, &mut now);
            changes(&was, &now, |g, diff| out.push((row(g), diff)));
        },
    );
    Ok(Some((rows, err.concat(errs))))
}

/// Calls `emit` with each group and its change, where a partition's
/// groups go from `before` to `after`: those from the first that differs
/// on, whose numbers may all have moved.
fn changes(before: &[Group], after: &[Group], mut emit: impl FnMut(&Group, Diff)) {
    let same = before.iter().zip(after).take_while(|(b, a)| b == a).count();
    for g in &before[same..] {
        emit(g, -1);
    }
    for g in &after[same..] {
        emit(g, 1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::{Form, Group, Sessions, Span, changes, decode_i64, encode_i64, groups};
    use crate::row::{Row, RowCodec};
    use crate::running::RunningState;

    /// The state of `times` (`None`: a NULL time) added one at a time.
    fn sessions(gap: i64, times: &[Option<i64>]) -> Sessions {
        let mut s = Sessions {
            gap,
            spans: Default::default(),
            nulls: 0,
        };
        for t in times {
            s.plus_owned(Sessions {
                gap,
                spans: t
                    .iter()
                    .map(|t| Span {
                        first: *t,
                        last: *t,
                        rows: 1,
                    })
                    .collect(),
                nulls: i64::from(t.is_none()),
            });
        }
        s
    }

    fn times(ts: &[i64]) -> Vec<Option<i64>> {
        ts.iter().map(|t| Some(*t)).collect()
    }

    fn spans(s: &Sessions) -> Vec<(i64, i64, i64)> {
        s.spans.iter().map(|s| (s.first, s.last, s.rows)).collect()
    }

    /// Times within the gap of a neighbour share its session, in any
    /// order of arrival; a time between two sessions within the gap of
    /// both joins them, ties and all.
    #[test]
    fn times_within_the_gap_share_a_session() {
        let in_order = sessions(10, &times(&[0, 5, 15, 26, 26, 40, 50]));
        assert_eq!(spans(&in_order), vec![(0, 15, 3), (26, 26, 2), (40, 50, 2)]);
        let shuffled = sessions(10, &times(&[50, 26, 0, 40, 15, 26, 5]));
        assert_eq!(shuffled, in_order);
        // 20 bridges 15 and 26, then 30 bridges that and 40.
        let bridged = sessions(10, &times(&[0, 5, 15, 26, 26, 40, 50, 20, 30]));
        assert_eq!(spans(&bridged), vec![(0, 50, 9)]);
        // States add up as their times would.
        let mut parts = sessions(10, &times(&[0, 26, 50]));
        parts.plus_owned(sessions(10, &times(&[5, 15, 26, 40])));
        assert_eq!(parts, in_order);
        // Exactly the gap apart continues; one more opens.
        let apart = sessions(10, &times(&[0, 10, 21]));
        assert_eq!(spans(&apart), vec![(0, 10, 2), (21, 21, 1)]);
    }

    fn group(number: i64, rows: i64, times: i64, first: Option<i64>, last: Option<i64>) -> Group {
        Group {
            number,
            rows,
            times,
            first,
            last,
        }
    }

    /// Rows of NULL time share the number of the running sum after them:
    /// every form numbers them as the SQL would.
    #[test]
    fn null_times_share_one_group() {
        let seen = |times: &[Option<i64>], form: Form| {
            let mut out = Vec::new();
            groups(&sessions(10, times), form, &mut out);
            out
        };
        let (t0, t30) = (Some(0), Some(30));
        let two_and_nulls = [t0, None, t30, None];
        // Each NULL time opens a session: the sum goes on by two.
        assert_eq!(
            seen(&two_and_nulls, Form::Continues),
            vec![
                group(1, 1, 1, t0, t0),
                group(2, 1, 1, t30, t30),
                group(4, 2, 0, None, None)
            ]
        );
        // None opens: they join the last session, numbered from 0.
        assert_eq!(
            seen(&two_and_nulls, Form::Opens),
            vec![group(0, 1, 1, t0, t0), group(1, 3, 1, t30, t30)]
        );
        // The first after a time opens none, the next one does.
        assert_eq!(
            seen(&two_and_nulls, Form::OpensAfterNull),
            vec![
                group(1, 1, 1, t0, t0),
                group(2, 1, 1, t30, t30),
                group(3, 2, 0, None, None)
            ]
        );
        assert_eq!(
            seen(&[t0, None], Form::OpensAfterNull),
            vec![group(1, 2, 1, t0, t0)]
        );
        // NULL times alone.
        assert_eq!(
            seen(&[None, None], Form::OpensAfterNull),
            vec![group(2, 2, 0, None, None)]
        );
        assert_eq!(seen(&[None, None], Form::Opens), vec![group(0, 2, 0, None, None)]);
    }

    /// A time that extends the last session changes only its group; one
    /// that bridges earlier sessions renumbers those after.
    #[test]
    fn changes_start_at_the_first_group_that_differs() {
        let seen = |before: &[i64], after: &[i64]| {
            let (mut was, mut now, mut out) = (Vec::new(), Vec::new(), Vec::new());
            groups(&sessions(10, &times(before)), Form::Continues, &mut was);
            groups(&sessions(10, &times(after)), Form::Continues, &mut now);
            changes(&was, &now, |g, d| {
                out.push((g.number, g.first, g.last, g.rows, d))
            });
            out
        };
        let (t0, t20, t25, t40) = (Some(0), Some(20), Some(25), Some(40));
        assert_eq!(
            seen(&[0, 20], &[0, 20, 25]),
            vec![(2, t20, t20, 1, -1), (2, t20, t25, 2, 1)]
        );
        assert_eq!(seen(&[0, 20], &[0, 20, 40]), vec![(3, t40, t40, 1, 1)]);
        assert_eq!(
            seen(&[0, 20], &[0, 20, 10]),
            vec![(1, t0, t0, 1, -1), (2, t20, t20, 1, -1), (1, t0, t20, 3, 1)]
        );
    }

    /// The hand encoding of 64-bit values and NULL is `arrow-row`'s, for
    /// integers and timestamps alike.
    #[test]
    fn sixty_four_bit_values_encode_as_arrow_row_does() {
        let values = [
            Some(i64::MIN),
            Some(-1),
            None,
            Some(0),
            Some(1_700_000_000_000),
            Some(i64::MAX),
        ];
        let columns: [(DataType, ArrayRef); 2] = [
            (DataType::Int64, Arc::new(Int64Array::from(values.to_vec()))),
            (
                DataType::Timestamp(TimeUnit::Millisecond, None),
                Arc::new(TimestampMillisecondArray::from(values.to_vec())),
            ),
        ];
        for (t, column) in columns {
            let codec = RowCodec::new(Arc::new(Schema::new(vec![Field::new("v", t, true)]))).unwrap();
            let rows = codec.encode(&[column], values.len()).unwrap();
            for (v, expected) in values.iter().zip(rows) {
                let mut row = Row::new();
                encode_i64(*v, &mut row);
                assert_eq!(row.as_slice(), expected.as_slice());
                assert_eq!(decode_i64(expected.as_slice()), Some(*v));
            }
        }
        assert_eq!(decode_i64(&[2; 9]), None);
    }
}
