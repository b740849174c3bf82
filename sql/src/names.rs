//! PostgreSQL's names for unaliased result columns.
//!
//! DataFusion names an unaliased column after its whole expression
//! (`count(*)`, `sum(t.v)`); PostgreSQL names it after the outermost
//! function or column (`count`, `sum`) and `?column?` otherwise. Clients and
//! tests written against PostgreSQL expect the latter.

use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};

/// The PostgreSQL names of a query's result columns, or `None` where the
/// select list has wildcards (their expansion keeps the column names).
pub fn output_names(query: &Query) -> Option<Vec<String>> {
    let mut body = query.body.as_ref();
    // A set operation takes its names from its first branch.
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_ref();
    }
    let select = match body {
        SetExpr::Select(s) => s,
        SetExpr::Query(q) => return output_names(q),
        _ => return None,
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Some(expr_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => Some(ident(&alias.value, alias.quote_style.is_some())),
            _ => None,
        })
        .collect()
}

fn ident(v: &str, quoted: bool) -> String {
    if quoted {
        v.to_string()
    } else {
        v.to_ascii_lowercase()
    }
}

pub(crate) fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => ident(&i.value, i.quote_style.is_some()),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(|i| ident(&i.value, i.quote_style.is_some()))
            .unwrap_or_else(|| "?column?".into()),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
            .unwrap_or_else(|| "?column?".into()),
        Expr::Nested(inner) => expr_name(inner),
        Expr::Cast { expr, data_type, .. } => match expr.as_ref() {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Function(_) => expr_name(expr),
            _ => cast_name(&data_type.to_string()),
        },
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::Subquery(q) => output_names(q)
            .and_then(|n| n.into_iter().next())
            .unwrap_or_else(|| "?column?".into()),
        _ => "?column?".into(),
    }
}

/// PostgreSQL names a cast literal after the internal type name.
fn cast_name(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    let t = t.trim_start_matches("pg_catalog.");
    let base = t.split('(').next().unwrap_or(t).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "float8" | "float" => "float8",
        "boolean" | "bool" => "bool",
        "text" => "text",
        "varchar" | "character varying" => "varchar",
        "numeric" | "decimal" => "numeric",
        "date" => "date",
        "timestamp" => "timestamp",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        "interval" => "interval",
        "bytea" => "bytea",
        other => return other.to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn names(sql: &str) -> Option<Vec<String>> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0);
        match stmt {
            datafusion::sql::sqlparser::ast::Statement::Query(q) => output_names(&q),
            _ => None,
        }
    }

    #[test]
    fn names_follow_postgres() {
        assert_eq!(
            names("SELECT t.k, count(*), sum(v) AS total, 1 + 2, 3::int, \"Mixed\" FROM t").unwrap(),
            vec!["k", "count", "total", "?column?", "int4", "Mixed"]
        );
        assert_eq!(names("SELECT * FROM t"), None);
    }
}
