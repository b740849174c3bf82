//! The dataflow plan IR: what a materialized view, a subscription or an
//! index computes, as data.
//!
//! The IR is produced by [`crate::lower`] from an optimized DataFusion
//! `LogicalPlan`, printed by `EXPLAIN`, and rendered into a differential
//! dataflow by the engine. Every node records its output schema; scalar
//! expressions are DataFusion `Expr`s bound against the schema of the node's
//! input, so the engine evaluates them exactly as DataFusion would.

use std::fmt;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;

/// Identifies a relation (table, materialized view) or a dataflow.
pub type GlobalId = u64;

/// A node of the plan IR together with its output schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub node: PlanNode,
    /// The output schema. Rows are positional; names are only for display
    /// and for binding the expressions of the node above.
    pub schema: DFSchemaRef,
}

/// The operators of the plan IR.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanNode {
    /// Read a table or materialized view (sharing its arrangement).
    Get { id: GlobalId, name: String },
    /// A fixed collection of rows.
    Constant { batch: RecordBatch },
    /// Fused filter then projection: keep rows where every `filters`
    /// predicate is true, then compute `projection`. Both are bound against
    /// `input.schema`.
    MapFilterProject {
        input: Box<Plan>,
        filters: Vec<Expr>,
        projection: Vec<Expr>,
    },
    /// Equi-join on `left_keys = right_keys`, then `residual` over the
    /// concatenated row. Output rows are the left columns then the right
    /// (for semi and anti joins: only the kept side's columns).
    Join {
        left: Box<Plan>,
        right: Box<Plan>,
        left_keys: Vec<Expr>,
        right_keys: Vec<Expr>,
        residual: Option<Expr>,
        kind: JoinKind,
        /// NULL keys match each other (set operations); otherwise a NULL
        /// key never matches.
        nulls_equal: bool,
    },
    /// Group by `group_keys` and compute `aggregates`. Output rows are the
    /// keys followed by one column per aggregate.
    Reduce {
        input: Box<Plan>,
        group_keys: Vec<Expr>,
        aggregates: Vec<AggregateExpr>,
    },
    /// Remove duplicate rows.
    Distinct { input: Box<Plan> },
    /// The first `limit` rows (after skipping `offset`) in `order`,
    /// maintained incrementally (`ORDER BY ... LIMIT` in a view). Ties are
    /// broken by the whole row, so the answer is deterministic.
    TopK {
        input: Box<Plan>,
        /// Sort expressions bound against `input.schema`.
        order: Vec<datafusion::logical_expr::SortExpr>,
        limit: Option<usize>,
        offset: usize,
    },
    /// Bag union (`UNION ALL`).
    Union { inputs: Vec<Plan> },
    /// `WITH RECURSIVE name AS (base UNION [ALL] step)`: the least fixpoint
    /// of `name = base + step(name)` (deduplicated for `UNION`), maintained
    /// with differential's `iterate`.
    Recursive {
        name: String,
        base: Box<Plan>,
        /// Reads the fixpoint through [`PlanNode::RecursiveRef`].
        step: Box<Plan>,
        distinct: bool,
    },
    /// The current value of the enclosing [`PlanNode::Recursive`] called
    /// `name`; only valid inside its `step`.
    RecursiveRef { name: String },
    /// Window functions over the partitions of `partition_by`: output rows
    /// are the input row followed by one column per function. A change
    /// recomputes the partitions it touches.
    Window {
        input: Box<Plan>,
        /// Bound against `input.schema`; shared by every function.
        partition_by: Vec<Expr>,
        /// `Expr::WindowFunction`s (possibly aliased), each with its own
        /// `ORDER BY` and frame, bound against `input.schema`.
        functions: Vec<Expr>,
    },
}

/// Kinds of equi-join the engine renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    LeftOuter,
    RightOuter,
    FullOuter,
    /// Left rows with at least one match (`IN`, `EXISTS`, `INTERSECT`).
    LeftSemi,
    /// Left rows with no match (`NOT EXISTS`, `EXCEPT`).
    LeftAnti,
    /// `NOT IN`: as `LeftAnti`, but nothing survives if the right side has a
    /// NULL key, and left rows with a NULL key never survive.
    LeftAntiNullAware,
    RightSemi,
    RightAnti,
}

/// Aggregate functions, split by how they are maintained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFunc {
    /// `count(*)`: accumulable.
    CountStar,
    /// `count(x)`: accumulable.
    Count,
    /// `sum(x)`: accumulable.
    Sum,
    /// `avg(x)`: accumulable (sum and count kept in the difference).
    Avg,
    /// `min(x)`: kept by a hierarchical reduction over hash buckets.
    Min,
    /// `max(x)`: kept by a hierarchical reduction over hash buckets.
    Max,
    /// Any other aggregate, or one with `DISTINCT`, `FILTER` or `ORDER BY`:
    /// DataFusion's accumulator over the group.
    General,
}

impl AggregateFunc {
    /// Whether the aggregate can be maintained in O(1) per update by
    /// accumulating it in the difference of the collection.
    pub fn is_accumulable(self) -> bool {
        !matches!(
            self,
            AggregateFunc::Min | AggregateFunc::Max | AggregateFunc::General
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            AggregateFunc::CountStar | AggregateFunc::Count => "count",
            AggregateFunc::Sum => "sum",
            AggregateFunc::Avg => "avg",
            AggregateFunc::Min => "min",
            AggregateFunc::Max => "max",
            AggregateFunc::General => "general",
        }
    }
}

/// One aggregate of a [`PlanNode::Reduce`].
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateExpr {
    pub func: AggregateFunc,
    /// The argument, bound against the reduce's input schema (`None` for
    /// `count(*)` and general aggregates).
    pub arg: Option<Expr>,
    /// `FILTER (WHERE f)`: only rows where `f` is true count. The engine
    /// reads the aggregate of [`AggregateExpr::argument`] instead, the
    /// argument where `f` holds and NULL elsewhere, which every one of
    /// these aggregates skips; a filtered `count(*)` is then a `count` of
    /// `true` where `f` holds.
    pub filter: Option<Expr>,
    /// `count(DISTINCT x)`: each distinct non-NULL value counts once.
    pub distinct: bool,
    /// The argument's type after DataFusion's coercion.
    pub input_type: DataType,
    /// The type DataFusion gives the aggregate's result.
    pub output_type: DataType,
    /// For [`AggregateFunc::General`]: the DataFusion aggregate to run.
    pub general: Option<GeneralAggregate>,
}

impl AggregateExpr {
    /// The expression whose values the aggregate folds, `FILTER` applied
    /// (`None` for an unfiltered `count(*)` and general aggregates).
    pub fn argument(&self) -> Option<Expr> {
        let Some(filter) = &self.filter else {
            return self.arg.clone();
        };
        let value = self.arg.clone().unwrap_or(datafusion::logical_expr::lit(true));
        Some(Expr::Case(datafusion::logical_expr::expr::Case::new(
            None,
            vec![(Box::new(filter.clone()), Box::new(value))],
            None,
        )))
    }
}

/// An aggregate the engine evaluates with DataFusion's own accumulator over
/// the whole group (`string_agg`, `count(DISTINCT x)`, `FILTER`, ...), so it
/// means exactly what DataFusion's batch engine says it means.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneralAggregate {
    pub udaf: std::sync::Arc<datafusion::logical_expr::AggregateUDF>,
    /// Arguments, bound against the reduce's input schema.
    pub args: Vec<Expr>,
    pub distinct: bool,
    pub filter: Option<Expr>,
    pub order_by: Vec<datafusion::logical_expr::SortExpr>,
    pub ignore_nulls: bool,
}

impl Plan {
    /// The node's inputs, in a fixed order.
    pub fn children(&self) -> Vec<&Plan> {
        match &self.node {
            PlanNode::Get { .. } | PlanNode::Constant { .. } | PlanNode::RecursiveRef { .. } => vec![],
            PlanNode::MapFilterProject { input, .. }
            | PlanNode::Reduce { input, .. }
            | PlanNode::Distinct { input }
            | PlanNode::TopK { input, .. }
            | PlanNode::Window { input, .. } => vec![input],
            PlanNode::Join { left, right, .. } => vec![left, right],
            PlanNode::Union { inputs } => inputs.iter().collect(),
            PlanNode::Recursive { base, step, .. } => vec![base, step],
        }
    }

    /// Whether this plan reads the recursive binding `name`.
    pub fn reads_recursive(&self, name: &str) -> bool {
        match &self.node {
            PlanNode::RecursiveRef { name: n } => n == name,
            _ => self.children().iter().any(|c| c.reads_recursive(name)),
        }
    }

    fn fmt_indent(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        let list = |exprs: &[Expr]| exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        match &self.node {
            PlanNode::Get { id, name } => writeln!(f, "{pad}Get {name} (u{id})"),
            PlanNode::Constant { batch } => {
                writeln!(f, "{pad}Constant rows={}", batch.num_rows())
            }
            PlanNode::MapFilterProject {
                input,
                filters,
                projection,
            } => {
                write!(f, "{pad}MapFilterProject")?;
                if !filters.is_empty() {
                    write!(f, " filter=[{}]", list(filters))?;
                }
                writeln!(f, " project=[{}]", list(projection))?;
                input.fmt_indent(f, depth + 1)
            }
            PlanNode::Join {
                left,
                right,
                left_keys,
                right_keys,
                residual,
                kind,
                nulls_equal,
            } => {
                write!(f, "{pad}Join {kind:?}")?;
                if *nulls_equal {
                    write!(f, " nulls_equal")?;
                }
                let on: Vec<String> = left_keys
                    .iter()
                    .zip(right_keys)
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect();
                write!(f, " on=[{}]", on.join(", "))?;
                if let Some(r) = residual {
                    write!(f, " residual=[{r}]")?;
                }
                writeln!(f)?;
                left.fmt_indent(f, depth + 1)?;
                right.fmt_indent(f, depth + 1)
            }
            PlanNode::Reduce {
                input,
                group_keys,
                aggregates,
            } => {
                let aggs: Vec<String> = aggregates
                    .iter()
                    .map(|a| match (&a.arg, &a.general) {
                        (_, Some(g)) => {
                            let args: Vec<String> = g.args.iter().map(|e| e.to_string()).collect();
                            let distinct = if g.distinct { "DISTINCT " } else { "" };
                            let filter = g
                                .filter
                                .as_ref()
                                .map(|f| format!(" FILTER ({f})"))
                                .unwrap_or_default();
                            format!("{}({distinct}{}){filter}", g.udaf.name(), args.join(", "))
                        }
                        (arg, None) => {
                            let arg = arg.as_ref().map_or("*".to_string(), |e| e.to_string());
                            let arg = if a.distinct {
                                format!("DISTINCT {arg}")
                            } else {
                                arg
                            };
                            let filter = a
                                .filter
                                .as_ref()
                                .map(|f| format!(" FILTER ({f})"))
                                .unwrap_or_default();
                            format!("{}({arg}){filter}", a.func.name())
                        }
                    })
                    .collect();
                let kind = if aggregates.iter().all(|a| a.func.is_accumulable()) {
                    "accumulable"
                } else if aggregates.iter().all(|a| a.func != AggregateFunc::General) {
                    "hierarchical"
                } else {
                    "whole-group"
                };
                writeln!(
                    f,
                    "{pad}Reduce {kind} keys=[{}] aggregates=[{}]",
                    list(group_keys),
                    aggs.join(", ")
                )?;
                input.fmt_indent(f, depth + 1)
            }
            PlanNode::Distinct { input } => {
                writeln!(f, "{pad}Distinct")?;
                input.fmt_indent(f, depth + 1)
            }
            PlanNode::TopK {
                input,
                order,
                limit,
                offset,
            } => {
                let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
                write!(f, "{pad}TopK order=[{}]", order.join(", "))?;
                if let Some(l) = limit {
                    write!(f, " limit={l}")?;
                }
                if *offset > 0 {
                    write!(f, " offset={offset}")?;
                }
                writeln!(f)?;
                input.fmt_indent(f, depth + 1)
            }
            PlanNode::Union { inputs } => {
                writeln!(f, "{pad}Union")?;
                inputs.iter().try_for_each(|i| i.fmt_indent(f, depth + 1))
            }
            PlanNode::Recursive {
                name,
                base,
                step,
                distinct,
            } => {
                let union = if *distinct { "UNION" } else { "UNION ALL" };
                writeln!(f, "{pad}Recursive {name} {union}")?;
                base.fmt_indent(f, depth + 1)?;
                step.fmt_indent(f, depth + 1)
            }
            PlanNode::RecursiveRef { name } => writeln!(f, "{pad}RecursiveRef {name}"),
            PlanNode::Window {
                input,
                partition_by,
                functions,
            } => {
                let funcs: Vec<String> = functions
                    .iter()
                    .map(|e| e.clone().unalias().to_string())
                    .collect();
                writeln!(
                    f,
                    "{pad}Window partition_by=[{}] functions=[{}]",
                    list(partition_by),
                    funcs.join(", ")
                )?;
                input.fmt_indent(f, depth + 1)
            }
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_indent(f, 0)
    }
}
