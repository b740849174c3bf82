//! PostgreSQL spellings that clients (psql above all) send and DataFusion
//! does not read, and the catalog functions they call.
//!
//! [`rewrite`] edits a parsed statement in place: schema-qualified calls
//! (`pg_catalog.format_type(...)`, `FROM pg_catalog.unnest(...)`) lose the
//! schema, `unnest(a) x` names its column `x`, `OPERATOR(pg_catalog.~)`
//! becomes `~`, `COLLATE pg_catalog.default` goes, and casts to
//! PostgreSQL's catalog types (`regclass`, `oid`, `pg_catalog.text`, ...)
//! become casts DataFusion knows. [`register_functions`] adds the
//! `pg_catalog` functions psql calls, answering for a single-user,
//! single-schema server. The catalog relations themselves live in the
//! coordinator; this module never reads them.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, DataType as SqlType, Expr as SqlExpr, Ident, ObjectName, ObjectNamePart,
    visit_expressions_mut,
};

/// Rewrite PostgreSQL-only spellings in `statement`.
pub fn rewrite(statement: &mut ast::Statement) {
    if let ast::Statement::Query(q) = statement {
        alias_select_list(q);
    }
    let _ = ast::VisitMut::visit(statement, &mut TableFunctions);
    let _ = visit_expressions_mut(statement, |e| {
        match e {
            SqlExpr::Function(f) => {
                if f.name.0.len() == 2 && part_is(&f.name.0[0], "pg_catalog") {
                    f.name.0.remove(0);
                }
                // Catalog lookups by oid, as subqueries of the catalog.
                let lookup = match f.name.0.as_slice() {
                    [n] if part_is(n, "pg_get_viewdef") => view_definition(f),
                    [n] if part_is(n, "pg_get_indexdef") => index_definition(f),
                    _ => None,
                };
                if let Some(rewritten) = lookup {
                    *e = rewritten;
                    return ControlFlow::<()>::Continue(());
                }
                if f.name.0.len() == 1
                    && part_is(&f.name.0[0], "array")
                    && let ast::FunctionArguments::Subquery(q) = &f.args
                    && let Some(rewritten) = array_subquery(q)
                {
                    *e = rewritten;
                }
            }
            SqlExpr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op
                    && let Some(symbol) = parts.last()
                {
                    let plain = match symbol.as_str() {
                        "~" => Some(BinaryOperator::PGRegexMatch),
                        "~*" => Some(BinaryOperator::PGRegexIMatch),
                        "!~" => Some(BinaryOperator::PGRegexNotMatch),
                        "!~*" => Some(BinaryOperator::PGRegexNotIMatch),
                        "=" => Some(BinaryOperator::Eq),
                        "<>" => Some(BinaryOperator::NotEq),
                        _ => None,
                    };
                    if let Some(p) = plain {
                        *op = p;
                    }
                }
            }
            SqlExpr::Collate { expr, .. } => {
                *e = (**expr).clone();
            }
            SqlExpr::Cast { data_type, .. } => {
                if let Some(t) = catalog_type(data_type) {
                    *data_type = t;
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Table functions in `FROM`, as PostgreSQL reads them:
/// `pg_catalog.unnest(...)` is `unnest(...)` (other `pg_catalog.f(...)` lose
/// the schema), and `unnest(array) x` names its one column `x`.
struct TableFunctions;

impl ast::VisitorMut for TableFunctions {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
        if let ast::TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } = factor
            && name.0.len() == 2
            && part_is(&name.0[0], "pg_catalog")
        {
            if part_is(&name.0[1], "unnest") {
                let array_exprs: Vec<SqlExpr> = args
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => Some(e.clone()),
                        _ => None,
                    })
                    .collect();
                if array_exprs.len() == args.args.len() {
                    *factor = ast::TableFactor::UNNEST {
                        alias: alias.take(),
                        array_exprs,
                        with_offset: false,
                        with_offset_alias: None,
                        with_ordinality: false,
                    };
                }
            } else {
                name.0.remove(0);
            }
        }
        if let ast::TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } = factor
            && array_exprs.len() == 1
            && alias.columns.is_empty()
        {
            alias.columns = vec![ast::TableAliasColumnDef::from_name(alias.name.value.clone())];
        }
        ControlFlow::Continue(())
    }
}

/// Give unaliased scalar subqueries, and repeats of an earlier expression,
/// in the outermost select list distinct names. PostgreSQL allows both;
/// DataFusion refuses duplicate names and loses unaliased subqueries
/// under `ORDER BY`. The result columns are renamed to PostgreSQL's names
/// afterwards (see [`crate::names`]), so the aliases are never seen.
fn alias_select_list(q: &mut ast::Query) {
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let items = &mut select.projection;
    if items.iter().any(|i| {
        matches!(
            i,
            ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..)
        )
    }) {
        return;
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        let ast::SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        let text = e.to_string();
        let repeat = seen.contains(&text);
        seen.push(text);
        // DataFusion names every subquery `<subquery>`, so two items that
        // differ only in their subqueries (or their left sides) would clash.
        let subquery = matches!(
            e,
            SqlExpr::Subquery(_) | SqlExpr::InSubquery { .. } | SqlExpr::Exists { .. }
        );
        if subquery || repeat {
            let name = format!("{} {i}", crate::names::expr_name(e));
            *item = ast::SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', name),
            };
        }
    }
}

/// `ARRAY(SELECT x FROM ... ORDER BY o)` is `(SELECT array_agg(x ORDER BY o)
/// FROM ...)` (except that no rows give NULL rather than an empty array).
fn array_subquery(q: &ast::Query) -> Option<SqlExpr> {
    if let Some(e) = prefix_each(q) {
        return Some(e);
    }
    // Weir has no row security policies: psql's `\dp` collects them (with
    // correlated subqueries over role arrays) from a `pg_policy` that is
    // always empty, so the array is always empty too.
    if let ast::SetExpr::Select(select) = q.body.as_ref()
        && let [from] = select.from.as_slice()
        && let ast::TableFactor::Table { name, .. } = &from.relation
        && name.0.last().is_some_and(|p| part_is(p, "pg_policy"))
    {
        return parse_expr("string_to_array('', ',')");
    }
    let mut q = q.clone();
    let order = q.order_by.take();
    let ast::SetExpr::Select(select) = q.body.as_mut() else {
        return None;
    };
    let item = match select.projection.as_slice() {
        [ast::SelectItem::UnnamedExpr(e)] | [ast::SelectItem::ExprWithAlias { expr: e, .. }] => e.clone(),
        _ => return None,
    };
    let order = match order {
        None => String::new(),
        Some(ast::OrderBy {
            kind: ast::OrderByKind::Expressions(list),
            ..
        }) => {
            let keys: Vec<String> = list
                .iter()
                .map(|o| {
                    let key = if o.expr.to_string() == "1" {
                        item.to_string()
                    } else {
                        o.expr.to_string()
                    };
                    format!("{key}{}", o.options)
                })
                .collect();
            format!(" ORDER BY {}", keys.join(", "))
        }
        Some(_) => return None,
    };
    let text = format!("array_agg({item}{order})");
    let agg = parse_expr(&text)?;
    select.projection = vec![ast::SelectItem::UnnamedExpr(agg)];
    Some(SqlExpr::Subquery(Box::new(q)))
}

/// The `i`th argument of call `f`, when it is a plain positional one.
fn argument(f: &ast::Function, i: usize) -> Option<&SqlExpr> {
    let ast::FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.get(i) {
        Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e))) => Some(e),
        _ => None,
    }
}

/// `pg_get_viewdef(oid [, pretty])` (psql's `\d+` of a view) as a lookup
/// of the view's definition in `pg_views` and `pg_matviews` by the name
/// `pg_class` gives the oid.
fn view_definition(f: &ast::Function) -> Option<SqlExpr> {
    let oid = argument(f, 0)?;
    let text = format!(
        "(SELECT d.definition FROM pg_catalog.pg_class c JOIN \
         (SELECT viewname AS n, definition FROM pg_catalog.pg_views \
          UNION ALL SELECT matviewname, definition FROM pg_catalog.pg_matviews) d \
         ON d.n = c.relname WHERE c.oid = {oid})"
    );
    parse_expr(&text)
}

/// `pg_get_indexdef(oid [, column, pretty])` (psql's `\d` of a table
/// and of an index) as a lookup: of the index's definition in
/// `pg_indexes` by the name `pg_class` gives the oid, or for a column
/// other than 0, of that column's name in `pg_attribute`.
fn index_definition(f: &ast::Function) -> Option<SqlExpr> {
    let oid = argument(f, 0)?;
    let whole = match argument(f, 1) {
        None => true,
        Some(SqlExpr::Value(v)) => v.to_string() == "0",
        Some(_) => false,
    };
    let text = if whole {
        format!(
            "(SELECT d.indexdef FROM pg_catalog.pg_class c JOIN pg_catalog.pg_indexes d \
             ON d.indexname = c.relname WHERE c.oid = {oid})"
        )
    } else {
        let column = argument(f, 1)?;
        format!(
            "(SELECT d.attname FROM pg_catalog.pg_attribute d \
             WHERE d.attrelid = {oid} AND d.attnum = {column})"
        )
    };
    parse_expr(&text)
}

/// `ARRAY(SELECT 'p' || x FROM unnest(a) x)` (psql's `\d+` asks so for
/// TOAST options) is each element of `a` prefixed with `'p'`: a correlated
/// `unnest` DataFusion cannot plan, written instead with array and string
/// functions (elements joined on a unit separator, prefixed, split again).
fn prefix_each(q: &ast::Query) -> Option<SqlExpr> {
    let ast::SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if select.selection.is_some()
        || q.order_by.is_some()
        || select.from.len() != 1
        || !select.from[0].joins.is_empty()
    {
        return None;
    }
    let ast::TableFactor::UNNEST {
        alias: Some(alias),
        array_exprs,
        ..
    } = &select.from[0].relation
    else {
        return None;
    };
    let [array] = array_exprs.as_slice() else {
        return None;
    };
    let [
        ast::SelectItem::UnnamedExpr(SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            right,
        }),
    ] = select.projection.as_slice()
    else {
        return None;
    };
    let SqlExpr::Identifier(x) = right.as_ref() else {
        return None;
    };
    if x.value != alias.name.value {
        return None;
    }
    let SqlExpr::Value(v) = left.as_ref() else {
        return None;
    };
    let ast::Value::SingleQuotedString(prefix) = &v.value else {
        return None;
    };
    let p = prefix.replace('\'', "''");
    let text = format!(
        "CASE WHEN cardinality({array}) > 0 THEN string_to_array('{p}' || array_to_string({array}, chr(31) || '{p}'), chr(31)) ELSE {array} END"
    );
    parse_expr(&text)
}

/// `text` parsed as one PostgreSQL expression (the rewrites' output).
fn parse_expr(text: &str) -> Option<SqlExpr> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .ok()?
        .parse_expr()
        .ok()
}

fn part_is(part: &ObjectNamePart, name: &str) -> bool {
    matches!(part, ObjectNamePart::Identifier(Ident { value, .. }) if value.eq_ignore_ascii_case(name))
}

/// The DataFusion-readable type for a PostgreSQL catalog type name.
fn catalog_type(t: &SqlType) -> Option<SqlType> {
    match t {
        SqlType::Custom(ObjectName(parts), _) => {
            let name = match parts.last()? {
                ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                _ => return None,
            };
            Some(match name.as_str() {
                "text" | "name" | "char" | "regclass" | "regtype" | "regnamespace" | "regproc"
                | "regrole" => SqlType::Text,
                "oid" | "int8" => SqlType::BigInt(None),
                "int4" => SqlType::Int(None),
                "int2" => SqlType::SmallInt(None),
                "bool" => SqlType::Boolean,
                _ => return None,
            })
        }
        SqlType::Array(ast::ArrayElemTypeDef::SquareBracket(inner, size)) => Some(SqlType::Array(
            ast::ArrayElemTypeDef::SquareBracket(Box::new(catalog_type(inner)?), *size),
        )),
        _ => None,
    }
}

/// The OIDs of `weir_catalog`'s relations in `pg_class` (below the first
/// user OID, 16384): off the search path, so `pg_table_is_visible` is false
/// for them.
pub const WEIR_CATALOG_RELATION_OIDS: std::ops::Range<i64> = 16100..16384;

/// Register the `pg_catalog` functions clients call.
pub fn register_functions(state: &mut SessionState) {
    let constant = |name: &'static str, value: ScalarValue| {
        Arc::new(ScalarUDF::new_from_impl(CatalogFunction {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
            body: Body::Constant(value),
        }))
    };
    let text = |s: &str| ScalarValue::Utf8(Some(s.into()));
    let functions = [
        constant("pg_get_userbyid", text("weir")),
        Arc::new(ScalarUDF::new_from_impl(CatalogFunction {
            name: "pg_table_is_visible",
            signature: Signature::variadic_any(Volatility::Stable),
            body: Body::TableIsVisible,
        })),
        constant("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        constant("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
        constant("pg_relation_is_publishable", ScalarValue::Boolean(Some(false))),
        constant("has_table_privilege", ScalarValue::Boolean(Some(true))),
        constant("has_schema_privilege", ScalarValue::Boolean(Some(true))),
        constant("has_database_privilege", ScalarValue::Boolean(Some(true))),
        constant("pg_encoding_to_char", text("UTF8")),
        constant("pg_get_expr", ScalarValue::Utf8(None)),
        constant("pg_get_constraintdef", ScalarValue::Utf8(None)),
        constant("pg_get_statisticsobjdef_columns", ScalarValue::Utf8(None)),
        constant("obj_description", ScalarValue::Utf8(None)),
        constant("col_description", ScalarValue::Utf8(None)),
        constant("shobj_description", ScalarValue::Utf8(None)),
        constant("pg_get_function_arguments", ScalarValue::Utf8(None)),
        constant("pg_get_function_result", ScalarValue::Utf8(None)),
        constant("pg_backend_pid", ScalarValue::Int32(Some(1))),
        constant("pg_table_size", ScalarValue::Int64(None)),
        constant("pg_size_pretty", ScalarValue::Utf8(None)),
        constant("current_schema", text("public")),
        constant("current_user", text("weir")),
        constant("session_user", text("weir")),
        constant(
            "version",
            text(concat!("PostgreSQL 15.0 (Weir ", env!("CARGO_PKG_VERSION"), ")")),
        ),
        Arc::new(ScalarUDF::new_from_impl(CatalogFunction {
            name: "format_type",
            signature: Signature::variadic_any(Volatility::Immutable),
            body: Body::FormatType,
        })),
        Arc::new(ScalarUDF::new_from_impl(CatalogFunction {
            name: "quote_ident",
            signature: Signature::variadic_any(Volatility::Immutable),
            body: Body::QuoteIdent,
        })),
    ];
    for f in functions {
        let _ = state.register_udf(f);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum Body {
    Constant(ScalarValue),
    FormatType,
    QuoteIdent,
    /// Whether a relation's schema is on the search path (`public` and
    /// `pg_catalog`; `weir_catalog` is not).
    TableIsVisible,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CatalogFunction {
    name: &'static str,
    signature: Signature,
    body: Body,
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match &self.body {
            Body::Constant(v) => v.data_type(),
            Body::FormatType | Body::QuoteIdent => DataType::Utf8,
            Body::TableIsVisible => DataType::Boolean,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &self.body {
            Body::Constant(v) => Ok(ColumnarValue::Scalar(v.clone())),
            Body::FormatType => {
                let n = args.number_rows;
                let oids = int_arg(&args.args, 0, n)?;
                let mods = int_arg(&args.args, 1, n)?;
                let out: StringArray = (0..n)
                    .map(|i| {
                        (!oids.is_null(i))
                            .then(|| format_type(oids.value(i), (!mods.is_null(i)).then(|| mods.value(i))))
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::TableIsVisible => {
                let n = args.number_rows;
                let oids = int_arg(&args.args, 0, n)?;
                let out: arrow::array::BooleanArray = (0..n)
                    .map(|i| (!oids.is_null(i)).then(|| !WEIR_CATALOG_RELATION_OIDS.contains(&oids.value(i))))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Body::QuoteIdent => {
                let n = args.number_rows;
                let a = args.args[0].to_array(n)?;
                let a = arrow::compute::cast(&a, &DataType::Utf8)?;
                let s = a.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
                let out: StringArray = s.iter().map(|v| v.map(quote_ident)).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

fn int_arg(args: &[ColumnarValue], i: usize, n: usize) -> Result<Int64Array> {
    let a: ArrayRef = match args.get(i) {
        Some(v) => v.to_array(n)?,
        None => Arc::new(Int64Array::new_null(n)),
    };
    let a = arrow::compute::cast(&a, &DataType::Int64)?;
    Ok(a.as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone())
}

/// PostgreSQL's `format_type(oid, typmod)` for the types Weir has.
pub fn format_type(oid: i64, typmod: Option<i64>) -> String {
    let m = typmod.filter(|m| *m >= 0);
    match oid {
        16 => "boolean".into(),
        17 => "bytea".into(),
        20 => "bigint".into(),
        21 => "smallint".into(),
        23 => "integer".into(),
        25 => "text".into(),
        114 => "json".into(),
        700 => "real".into(),
        701 => "double precision".into(),
        1042 => match m {
            Some(m) => format!("character({})", m - 4),
            None => "character".into(),
        },
        1043 => match m {
            Some(m) => format!("character varying({})", m - 4),
            None => "character varying".into(),
        },
        1082 => "date".into(),
        1083 => "time without time zone".into(),
        1114 => "timestamp without time zone".into(),
        1184 => "timestamp with time zone".into(),
        1186 => "interval".into(),
        1700 => match m {
            Some(m) => format!("numeric({},{})", ((m - 4) >> 16) & 0xffff, (m - 4) & 0xffff),
            None => "numeric".into(),
        },
        2950 => "uuid".into(),
        3802 => "jsonb".into(),
        _ => "???".into(),
    }
}

/// Quote an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}
