//! Vectorized evaluation of DataFusion expressions over encoded rows.
//!
//! An operator hands a slice of rows to [`RowEval::eval`]; the rows are
//! decoded into one `RecordBatch`, filters and projections run as
//! DataFusion `PhysicalExpr`s, and the results come back as Arrow arrays for
//! the caller to encode. Errors are isolated to the rows that raise them by
//! re-evaluating row by row, so one bad row never poisons its batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{and, filter_record_batch};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::EngineError;
use crate::row::{Row, RowCodec};

/// Compile logical expressions bound to `schema` into physical ones.
pub fn compile(exprs: &[Expr], schema: &DFSchema) -> Result<Vec<Arc<dyn PhysicalExpr>>, EngineError> {
    let props = ExecutionProps::new();
    exprs
        .iter()
        .map(|e| {
            create_physical_expr(e, schema, &props, &Default::default())
                .and_then(|p| crate::fast_path::rewrite(p, schema.as_arrow()))
                .map_err(|e| EngineError::Expression(e.to_string()))
        })
        .collect()
}

/// The outcome of [`RowEval::eval_rows`]: the whole batch's evaluation when
/// no row failed; otherwise each passing row's own evaluation, and the
/// failing rows with their errors.
pub type RowResults = (Option<Evaluated>, Vec<(usize, Evaluated)>, Vec<(usize, String)>);

/// Filters then groups of output expressions over rows of one schema.
pub struct RowEval {
    pub input: RowCodec,
    filters: Vec<Arc<dyn PhysicalExpr>>,
    outputs: Vec<Vec<Arc<dyn PhysicalExpr>>>,
}

/// The result of evaluating a batch: which input rows passed the filters,
/// and for each output group one array per expression (aligned with `kept`).
pub struct Evaluated {
    pub kept: Vec<usize>,
    pub outputs: Vec<Vec<ArrayRef>>,
}

impl RowEval {
    pub fn new(schema: &DFSchema, filters: &[Expr], outputs: &[&[Expr]]) -> Result<Self, EngineError> {
        Ok(RowEval {
            input: RowCodec::new(Arc::new(schema.as_arrow().clone()))?,
            filters: compile(filters, schema)?,
            outputs: outputs
                .iter()
                .map(|o| compile(o, schema))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Evaluate over already-decoded input.
    pub fn eval_batch(&self, batch: &RecordBatch) -> Result<Evaluated, String> {
        let n = batch.num_rows();
        let mut mask: Option<BooleanArray> = None;
        for f in &self.filters {
            let v = f
                .evaluate(batch)
                .map_err(|e| clean(&e))?
                .into_array(n)
                .map_err(|e| clean(&e))?;
            let v = v
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| "filter did not produce a boolean".to_string())?
                .clone();
            mask = Some(match mask {
                None => v,
                Some(m) => and(&m, &v).map_err(|e| e.to_string())?,
            });
        }
        let (batch, kept) = match mask {
            None => (batch.clone(), (0..n).collect()),
            Some(m) => {
                // NULL counts as false, as in SQL's WHERE.
                let kept: Vec<usize> = (0..n).filter(|i| m.is_valid(*i) && m.value(*i)).collect();
                if kept.len() == n {
                    (batch.clone(), kept)
                } else {
                    let m =
                        BooleanArray::from((0..n).map(|i| m.is_valid(i) && m.value(i)).collect::<Vec<_>>());
                    (filter_record_batch(batch, &m).map_err(|e| e.to_string())?, kept)
                }
            }
        };
        let rows = batch.num_rows();
        let outputs = self
            .outputs
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|e| {
                        e.evaluate(&batch)
                            .and_then(|v| v.into_array(rows))
                            .map_err(|e| clean(&e))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Evaluated { kept, outputs })
    }

    /// Evaluate over encoded rows. On an error, falls back to one row at a
    /// time and reports `(row index, error)` for each failing row.
    pub fn eval_rows(&self, rows: &[&[u8]]) -> RowResults {
        match self.input.decode(rows.iter().copied()) {
            Ok(batch) => self.eval_isolated(&batch),
            Err(e) => (
                None,
                vec![],
                (0..rows.len()).map(|i| (i, e.to_string())).collect(),
            ),
        }
    }

    /// Evaluate over decoded input, falling back to one row at a time on
    /// an error (as [`RowEval::eval_rows`]).
    pub fn eval_isolated(&self, batch: &RecordBatch) -> RowResults {
        let n = batch.num_rows();
        match self.eval_batch(batch) {
            Ok(ev) => (Some(ev), vec![], vec![]),
            Err(_) if n > 1 => {
                let mut ok = Vec::new();
                let mut errs = Vec::new();
                for i in 0..n {
                    match self.eval_batch(&batch.slice(i, 1)) {
                        Ok(ev) => ok.push((i, ev)),
                        Err(e) => errs.push((i, e)),
                    }
                }
                (None, ok, errs)
            }
            Err(e) => (None, vec![], vec![(0, e)]),
        }
    }
}

/// DataFusion's error text without its prefixes, in PostgreSQL's style.
pub fn clean(e: &datafusion::error::DataFusionError) -> String {
    let s = weir_sql::error::clean_message(e);
    if s.to_ascii_lowercase().contains("divide by zero") {
        "division by zero".to_string()
    } else {
        s
    }
}

/// Encode the `group`-th output of an evaluation, one row per kept input.
pub fn encode_group(codec: &RowCodec, ev: &Evaluated, group: usize) -> Result<Vec<Row>, String> {
    codec
        .encode(&ev.outputs[group], ev.kept.len())
        .map_err(|e| e.to_string())
}

/// Columns of output group `group` of `ev`, each `(index, codec)` encoding
/// its column alone (so bytes compare as values do), a column at a time;
/// `None` for NULL.
pub fn encode_alone(
    encoders: &[(usize, RowCodec)],
    ev: &Evaluated,
    group: usize,
) -> Result<Vec<Vec<Option<Row>>>, String> {
    encoders
        .iter()
        .map(|(i, codec)| {
            let column = &ev.outputs[group][*i];
            let encoded = codec
                .encode(std::slice::from_ref(column), ev.kept.len())
                .map_err(|e| e.to_string())?;
            Ok(encoded
                .into_iter()
                .enumerate()
                .map(|(pos, v)| column.is_valid(pos).then_some(v))
                .collect())
        })
        .collect()
}

/// The position in `schema` of the column `e` is, through aliases; `None`
/// for any other expression.
pub fn column_index(e: &Expr, schema: &DFSchema) -> Option<usize> {
    match e {
        Expr::Alias(a) => column_index(&a.expr, schema),
        Expr::Column(c) => schema.index_of_column(c).ok(),
        _ => None,
    }
}

/// Whether any of `arrays` is NULL at `i`.
pub fn any_null(arrays: &[ArrayRef], i: usize) -> bool {
    arrays.iter().any(|a| a.is_null(i))
}

/// Nullable fields named `{prefix}0`, `{prefix}1`, ... of the types of
/// `exprs` over `schema`: the schema of a row of evaluated expressions.
pub fn expr_fields(
    exprs: &[Expr],
    schema: &DFSchema,
    prefix: &str,
) -> Result<Vec<arrow::datatypes::Field>, EngineError> {
    exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let t = datafusion::logical_expr::ExprSchemable::get_type(e, schema)
                .map_err(|e| EngineError::Expression(e.to_string()))?;
            Ok(arrow::datatypes::Field::new(format!("{prefix}{i}"), t, true))
        })
        .collect()
}
