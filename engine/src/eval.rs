//! Vectorized evaluation of DataFusion expressions over encoded rows.
//!
//! An operator hands a slice of rows to [`RowEval::eval`]; the rows are
//! decoded into one `RecordBatch`, filters and projections run as
//! DataFusion `PhysicalExpr`s, and the results come back as Arrow arrays for
//! the caller to encode. Errors are isolated to the rows that raise them by
//! re-evaluating row by row, so one bad row never poisons its batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, NullArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{SortOptions, and, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::EngineError;
use crate::row::{Row, RowCodec};
use crate::spans::{Layout, Picker};

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
    /// Set when the expressions read only some of the columns.
    narrow: Option<Narrow>,
    filters: Vec<Arc<dyn PhysicalExpr>>,
    outputs: Vec<Vec<Arc<dyn PhysicalExpr>>>,
}

/// Decoding only the columns the expressions read: their bytes are cut out
/// of each row ([`crate::spans`]) and decoded, and every other column of
/// the batch is an untyped all-NULL placeholder no expression looks at.
/// Strings a key or a filter does not read are never decoded or checked.
struct Narrow {
    /// The columns read, ascending; not every column.
    read: Vec<usize>,
    layout: Layout,
    /// Cuts the read columns out of a row; `None` when they are its first
    /// columns, which are decoded where they lie.
    picker: Option<Picker>,
    /// The read columns' codec.
    codec: RowCodec,
    /// The input's schema with unread columns typed `Null`.
    schema: SchemaRef,
}

impl Narrow {
    fn new(input: &RowCodec, schema: &DFSchema, exprs: &[&Expr]) -> Option<Narrow> {
        let width = schema.fields().len();
        let mut read = Vec::new();
        for e in exprs {
            for c in e.column_refs() {
                read.push(schema.index_of_column(c).ok()?);
            }
        }
        read.sort_unstable();
        read.dedup();
        let layout = input.layout()?;
        // Worth it when it skips a string: a fixed-width column decodes
        // about as fast as its bytes are cut out.
        if !(0..width).any(|i| layout.is_variable(i) && read.binary_search(&i).is_err()) {
            return None;
        }
        let prefix = read.iter().enumerate().all(|(k, &c)| k == c);
        let picker = (!prefix).then(|| Picker::new(layout.clone(), read.clone()));
        let arrow = schema.as_arrow();
        let codec = RowCodec::new(Arc::new(arrow.project(&read).ok()?)).ok()?;
        let fields: Vec<Field> = (0..width)
            .map(|i| match read.binary_search(&i) {
                Ok(_) => arrow.field(i).clone(),
                Err(_) => Field::new(arrow.field(i).name(), DataType::Null, true),
            })
            .collect();
        Some(Narrow {
            read,
            layout,
            picker,
            codec,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    fn decode(&self, rows: &[&[u8]]) -> Result<RecordBatch, EngineError> {
        let n = rows.len();
        let mismatched = || EngineError::Encoding(crate::render::MISMATCHED_ROW.into());
        let mut scratch = Vec::new();
        let narrow = match &self.picker {
            None => {
                let k = self.read.len();
                let mut prefixes = Vec::with_capacity(n);
                for r in rows {
                    self.layout.ends(r, k, &mut scratch).ok_or_else(mismatched)?;
                    prefixes.push(&r[..scratch.last().copied().unwrap_or(0)]);
                }
                self.codec.decode(prefixes.into_iter())?
            }
            Some(picker) => {
                let mut bytes = Row::with_capacity(rows.iter().map(|r| r.len()).sum());
                let mut ends = Vec::with_capacity(n);
                for r in rows {
                    picker.pick(r, &mut scratch, &mut bytes).ok_or_else(mismatched)?;
                    ends.push(bytes.len());
                }
                let start = |i: usize| if i == 0 { 0 } else { ends[i - 1] };
                self.codec.decode((0..n).map(|i| &bytes[start(i)..ends[i]]))?
            }
        };
        // One placeholder shared by every unread column.
        let placeholder: ArrayRef = Arc::new(NullArray::new(n));
        let mut columns = vec![placeholder; self.schema.fields().len()];
        for (k, &c) in self.read.iter().enumerate() {
            columns[c] = narrow.column(k).clone();
        }
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| EngineError::Encoding(e.to_string()))
    }
}

/// The result of evaluating a batch: which input rows passed the filters,
/// and for each output group one array per expression (aligned with `kept`).
pub struct Evaluated {
    pub kept: Vec<usize>,
    pub outputs: Vec<Vec<ArrayRef>>,
}

impl RowEval {
    pub fn new(schema: &DFSchema, filters: &[Expr], outputs: &[&[Expr]]) -> Result<Self, EngineError> {
        let input = RowCodec::new(Arc::new(schema.as_arrow().clone()))?;
        let exprs: Vec<&Expr> = filters.iter().chain(outputs.iter().copied().flatten()).collect();
        Ok(RowEval {
            narrow: Narrow::new(&input, schema, &exprs),
            input,
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
        let batch = match &self.narrow {
            Some(narrow) => narrow.decode(rows),
            None => self.input.decode(rows.iter().copied()),
        };
        match batch {
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

/// `e` under any aliases.
pub(crate) fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// A picker of `exprs`, columns of `schema`, out of its rows into rows of
/// their own types (default sort options), and the codec of those rows;
/// `None` where a column cannot be picked (see [`column_picker`]).
pub(crate) fn own_picker(
    exprs: &[Expr],
    schema: &DFSchema,
) -> Result<Option<(Picker, RowCodec)>, EngineError> {
    let codec = RowCodec::new(Arc::new(Schema::new(expr_fields(exprs, schema, "k")?)))?;
    Ok(column_picker(exprs, schema, &codec).map(|p| (p, codec)))
}

/// When every one of `exprs` is a column of `schema` of the type `out`
/// (a codec with default sort options) gives it, a picker that makes their
/// row in `out` by copying those columns' bytes out of a row of `schema`,
/// with no decoding.
pub fn column_picker(exprs: &[Expr], schema: &DFSchema, out: &RowCodec) -> Option<Picker> {
    column_picker_as(exprs, schema, out, &vec![SortOptions::default(); exprs.len()])
}

/// [`column_picker`] for `out` encoded under `options` (one per
/// expression; a sort key), where [`Picker::recoded`] can re-encode them.
pub fn column_picker_as(
    exprs: &[Expr],
    schema: &DFSchema,
    out: &RowCodec,
    options: &[SortOptions],
) -> Option<Picker> {
    let types = out.schema().fields().iter().map(|f| f.data_type());
    let picks = exprs
        .iter()
        .zip(types)
        .map(|(e, t)| column_index(e, schema).filter(|&c| schema.field(c).data_type() == t))
        .collect::<Option<Vec<usize>>>()?;
    // The layout alone: a codec would build a row converter to throw away.
    let arrow = schema.as_arrow();
    let layout = Layout::of(arrow, &vec![SortOptions::default(); arrow.fields().len()])?;
    if picks.len() != exprs.len() || options.len() != exprs.len() {
        return None;
    }
    Picker::recoded(layout, picks, options)
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
