//! Weir's SQL layer: parse statements, plan queries with DataFusion, and lower
//! them into the dataflow plan IR that workers render.
//!
//! Planning is a pure function of the statement text and the catalog it is
//! given: no I/O, no threads, no clocks beyond DataFusion's own. The
//! coordinator owns the catalog and hands a read-only view of it in through
//! [`CatalogReader`]; the engine consumes the [`plan::Plan`] IR this crate
//! produces and must not re-plan SQL itself.

pub mod constant_lists;
pub mod cross_pushdown;
pub mod decorrelate;
pub mod error;
pub mod extreme_join;
pub mod in_subquery;
pub mod lateral;
pub mod lower;
pub mod names;
pub mod pg_compat;
pub mod plan;
pub mod planner;
pub mod set_ops;
pub mod single_row;
pub mod source_sql;
pub mod statement;
pub mod types;

pub use error::SqlError;
pub use plan::{AggregateExpr, AggregateFunc, GlobalId, JoinKind, Plan, PlanNode};
pub use planner::{CatalogReader, Planner, RelationDesc, RelationKind, SYSTEM_SCHEMAS};
