//! Weir's engine: renders the plan IR into timely/differential dataflows and
//! serves reads of the arrangements they maintain.
//!
//! Runs inside worker threads. It receives commands (see `weir-protocol`)
//! from the worker loop, builds dataflows, applies table writes, answers
//! peeks and feeds subscriptions. It never parses SQL and never talks to
//! clients: plans arrive already lowered by `weir-sql`.
//!
//! Rows inside dataflows are `arrow-row` encoded byte strings ([`row`]);
//! scalar expressions are DataFusion `PhysicalExpr`s evaluated a batch at a
//! time ([`eval`]).

mod byte_filter;
pub mod compute;
mod constant_format;
mod constant_join;
mod distinct_count;
pub mod eval;
mod fast_path;
mod insert_join;
mod join_matches;
mod leaders;
pub mod log;
pub mod minmax;
pub(crate) mod rank;
pub mod recursive;
pub mod reduce;
pub mod render;
pub mod rising;
pub mod row;
mod running;
mod sessions;
pub mod sizes;
mod slots;
mod spans;
mod timestamp_shift;
pub mod window;
mod window_reduce;

pub use compute::ComputeState;

/// Weir time, in milliseconds since the Unix epoch.
pub type Time = u64;
/// Multiplicity changes.
pub type Diff = isize;

/// Errors raised while preparing a plan for rendering.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot compile expression: {0}")]
    Expression(String),
    #[error("cannot encode rows: {0}")]
    Encoding(String),
    #[error("unknown relation u{0}")]
    UnknownRelation(u64),
}
