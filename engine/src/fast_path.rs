//! Faster kernels for a few DataFusion expressions, each falling back to
//! DataFusion's own.
//!
//! Some of DataFusion's kernels work a value at a time for generality that
//! the common case does not need: calendar arithmetic for `timestamp ±
//! INTERVAL '10 seconds'` ([`crate::timestamp_shift`]), a format string
//! parsed again for each value of `to_char(ts, '%Y-%m-%d')`
//! ([`crate::constant_format`]). [`rewrite`] wraps each expression one of
//! these recognizes in a [`FastPath`], which asks its kernel first and
//! evaluates the original expression wherever the kernel declines (a case
//! it does not cover, an overflow, a bad value), so every answer and every
//! error is DataFusion's. The kernels own their cases; this module owns
//! only the wrapping.

use std::fmt::{self, Debug};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

/// A faster way to evaluate one recognized expression.
pub trait Kernel: Debug + Send + Sync + 'static {
    /// The expression's value over a batch of `rows` rows, given its
    /// children's values there; `None` to let DataFusion's own kernel
    /// answer.
    fn evaluate(&self, children: &[ColumnarValue], rows: usize) -> Option<ColumnarValue>;
}

/// `general` (the DataFusion expression replaced), evaluated by `kernel`
/// where it can.
#[derive(Debug)]
pub struct FastPath<K> {
    general: Arc<dyn PhysicalExpr>,
    kernel: K,
}

impl<K: Kernel> FastPath<K> {
    pub fn wrap(general: Arc<dyn PhysicalExpr>, kernel: K) -> Arc<dyn PhysicalExpr> {
        Arc::new(FastPath { general, kernel })
    }
}

/// Wrap every expression in `expr` (whose input is `schema`) that a kernel
/// recognizes.
pub fn rewrite(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let wrapped = match crate::timestamp_shift::recognize(&e, schema)? {
            Some(w) => Some(w),
            None => crate::constant_format::recognize(&e, schema)?,
        };
        Ok(match wrapped {
            Some(w) => Transformed::yes(w),
            None => Transformed::no(e),
        })
    })
    .map(|t| t.data)
}

// Equal, hashed and shown as the expression they replace.
impl<K> PartialEq for FastPath<K> {
    fn eq(&self, other: &Self) -> bool {
        self.general.as_ref() == other.general.as_ref()
    }
}

impl<K> Eq for FastPath<K> {}

impl<K> Hash for FastPath<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.general.as_ref().hash(state)
    }
}

impl<K> fmt::Display for FastPath<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.general, f)
    }
}

impl<K: Kernel> PhysicalExpr for FastPath<K> {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.general.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.general.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let children = self
            .general
            .children()
            .iter()
            .map(|c| c.evaluate(batch))
            .collect::<Result<Vec<_>>>()?;
        match self.kernel.evaluate(&children, batch.num_rows()) {
            Some(out) => Ok(out),
            None => self.general.evaluate(batch),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.general.children()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        // New children may change what the kernel assumed: the plain
        // expression again.
        Arc::clone(&self.general).with_new_children(children)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.general.fmt_sql(f)
    }
}
