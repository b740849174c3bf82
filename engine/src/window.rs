//! Window functions (`row_number() OVER (...)`, `sum(x) OVER (... ROWS ...)`).
//!
//! Rows are keyed by their partition; a change to a partition re-evaluates
//! that partition only, with DataFusion's own window expressions over the
//! partition's rows sorted by each function's `ORDER BY`. Ties in the order
//! are broken by the encoded row, so every evaluation of the same partition
//! gives the same answer. This module owns only the partition evaluation;
//! keying and error routing come from [`crate::render`].

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, cast, lexsort_to_indices, take, take_record_batch};
use arrow::datatypes::{Field, Schema};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::WindowExpr;
use datafusion::physical_planner::create_window_expr;

use crate::eval::clean;
use crate::row::{Row, RowCodec};
use crate::{Diff, EngineError};

/// Evaluates the window functions of one partition.
pub struct PartitionEval {
    input: RowCodec,
    functions: Vec<Arc<dyn WindowExpr>>,
    output: RowCodec,
}

impl PartitionEval {
    /// Compile `functions`, bound against `input`; `window` is the window
    /// node's output schema, `input`'s columns then one per function.
    pub fn new(input: &DFSchema, functions: &[Expr], window: &DFSchema) -> Result<Self, EngineError> {
        let output: Vec<Field> = window.as_arrow().fields()[input.fields().len()..]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let props = ExecutionProps::new();
        let compiled = functions
            .iter()
            .map(|e| {
                create_window_expr(e, input, &props, &Default::default())
                    .map_err(|e| EngineError::Expression(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PartitionEval {
            input: RowCodec::new(Arc::new(input.as_arrow().clone()))?,
            functions: compiled,
            output: RowCodec::new(Arc::new(Schema::new(output)))?,
        })
    }

    /// The partition's rows, each followed by its window values. `rows` are
    /// the partition's distinct rows in encoded order with their counts.
    pub fn evaluate(&self, rows: &[(&[u8], Diff)]) -> Result<Vec<(Row, Diff)>, String> {
        let expanded = expand(rows);
        let n = expanded.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let batch = self
            .input
            .decode(expanded.iter().copied())
            .map_err(|e| e.to_string())?;
        let columns = self.columns(&batch)?;
        let encoded = self.output.encode(&columns, n).map_err(|e| e.to_string())?;
        let mut out: Vec<(Row, Diff)> = expanded
            .iter()
            .zip(encoded)
            .map(|(r, w)| (Row::concat(r, &w), 1))
            .collect();
        differential_dataflow::consolidation::consolidate(&mut out);
        Ok(out)
    }

    /// The window values of a decoded partition, one array per function
    /// in `batch`'s row order. Ties in a function's order fall back to
    /// that row order.
    pub fn columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, String> {
        let n = batch.num_rows();
        let position: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..n as u32));
        let mut columns = Vec::with_capacity(self.functions.len());
        for (f, field) in self.functions.iter().zip(self.output.schema().fields()) {
            let mut keys = f.order_by_columns(batch).map_err(|e| e.to_string())?;
            keys.push(SortColumn {
                values: position.clone(),
                options: None,
            });
            let order = lexsort_to_indices(&keys, None).map_err(|e| e.to_string())?;
            let sorted = take_record_batch(batch, &order).map_err(|e| e.to_string())?;
            let values = f.evaluate(&sorted).map_err(|e| clean(&e))?;
            // Put the values back in the partition's row order.
            let mut back = vec![0u32; n];
            for (j, i) in order.values().iter().enumerate() {
                back[*i as usize] = j as u32;
            }
            let values = take(&values, &UInt32Array::from(back), None).map_err(|e| e.to_string())?;
            let values = if values.data_type() == field.data_type() {
                values
            } else {
                cast(&values, field.data_type()).map_err(|e| e.to_string())?
            };
            columns.push(values);
        }
        Ok(columns)
    }
}

/// One entry per copy of each row (rows with a negative count, which a
/// consistent input never holds, contribute none).
pub(crate) fn expand<'a>(rows: &[(&'a [u8], Diff)]) -> Vec<&'a [u8]> {
    rows.iter()
        .flat_map(|(r, c)| std::iter::repeat_n(*r, (*c).max(0) as usize))
        .collect()
}
