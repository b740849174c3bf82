//! Long `IN` lists of constants, bound without DataFusion's SQL planner.
//!
//! `UPDATE t SET ... WHERE id IN (1, 2, ..., 1000)`, as feeds and ORMs
//! send it, cost more to bind than everything else in the statement: the
//! planner converts, checks and rewrites each constant as a general
//! expression, several times over. [`take`] swaps each long list of plain
//! integer or string constants in a statement for one placeholder and
//! converts the constants itself, to the very literals the planner makes
//! of them (an integer that fits `bigint` is an `Int64`, a quoted string a
//! `Utf8`); [`restore`] puts them into the bound plan. Lists of anything
//! else are left to the planner. This module touches nothing but those
//! lists.

use std::ops::ControlFlow;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast;

/// Lists at least this long are taken (here, and read off the tokens by
/// the parser, `statement::constant_in_lists`); shorter ones cost little.
pub(crate) const LONG_LIST: usize = 16;

/// The placeholder left in a list's place, followed by its index: no
/// tokenizer makes a name with a NUL in it.
const MARK: &str = "$\0list";

/// A list taken out of a statement: as written, and as literals.
pub struct Taken {
    written: Vec<ast::Expr>,
    bound: Vec<Expr>,
}

/// Take the long constant lists out of `statement`, leaving a placeholder
/// in each one's place.
pub fn take(statement: &mut ast::Statement) -> Vec<Taken> {
    let mut taken = Vec::new();
    let _ = ast::visit_expressions_mut(statement, |e| {
        if let ast::Expr::InList { list, .. } = e
            && list.len() >= LONG_LIST
            && let Some(bound) = literals(list)
        {
            let mark = ast::Value::Placeholder(format!("{MARK}{}", taken.len()));
            let written = std::mem::replace(list, vec![ast::Expr::Value(mark.into())]);
            taken.push(Taken { written, bound });
        }
        ControlFlow::<()>::Continue(())
    });
    taken
}

/// Undo [`take`] on `statement`.
pub fn put_back(statement: &mut ast::Statement, taken: Vec<Taken>) {
    let mut written: Vec<Option<Vec<ast::Expr>>> = taken.into_iter().map(|t| Some(t.written)).collect();
    let _ = ast::visit_expressions_mut(statement, |e| {
        if let ast::Expr::InList { list, .. } = e
            && let Some(i) = marked(list.as_slice(), |e| match e {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Placeholder(p) => Some(p.as_str()),
                    _ => None,
                },
                _ => None,
            })
            && let Some(w) = written.get_mut(i).and_then(Option::take)
        {
            *list = w;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `plan` (bound from a statement [`take`] went over) with each
/// placeholder list replaced by its literals; `None` if a placeholder is
/// left anywhere else, where the statement must be bound as written.
pub fn restore(plan: LogicalPlan, taken: &[Taken]) -> Result<Option<LogicalPlan>> {
    let plan = plan
        .transform_up_with_subqueries(|node| {
            let node = node.map_expressions(|e| {
                e.transform_up(|e| match e {
                    Expr::InList(InList { expr, list, negated }) => {
                        match marked(list.as_slice(), placeholder).and_then(|i| taken.get(i)) {
                            Some(t) => Ok(Transformed::yes(Expr::InList(InList::new(
                                expr,
                                t.bound.clone(),
                                negated,
                            )))),
                            None => Ok(Transformed::no(Expr::InList(InList { expr, list, negated }))),
                        }
                    }
                    other => Ok(Transformed::no(other)),
                })
            })?;
            // A projection's field may be nullable for a placeholder and
            // not for constants.
            if node.transformed {
                node.map_data(|n| n.recompute_schema())
            } else {
                Ok(node)
            }
        })?
        .data;
    let mut left = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                left |= placeholder(e).is_some_and(|p| p.starts_with(MARK));
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok((!left).then_some(plan))
}

fn placeholder(e: &Expr) -> Option<&str> {
    match e {
        Expr::Placeholder(p) => Some(p.id.as_str()),
        _ => None,
    }
}

/// The index of the list that `list`, a single placeholder, stands for.
fn marked<T>(list: &[T], name: impl Fn(&T) -> Option<&str>) -> Option<usize> {
    match list {
        [one] => name(one)?.strip_prefix(MARK)?.parse().ok(),
        _ => None,
    }
}

/// `list` as the literals DataFusion's planner makes of it, where every
/// item is an integer that fits `bigint` (negated or not), or every item
/// a quoted string.
fn literals(list: &[ast::Expr]) -> Option<Vec<Expr>> {
    let number = |e: &ast::Expr| -> Option<i64> {
        let (negated, value) = match e {
            ast::Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } => (true, expr.as_ref()),
            other => (false, other),
        };
        let ast::Expr::Value(v) = value else {
            return None;
        };
        let ast::Value::Number(n, false) = &v.value else {
            return None;
        };
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if negated {
            format!("-{n}").parse().ok()
        } else {
            n.parse().ok()
        }
    };
    let string = |e: &ast::Expr| match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let literal = |v: ScalarValue| Expr::Literal(v, None);
    match list.first()? {
        ast::Expr::Value(v) if matches!(v.value, ast::Value::SingleQuotedString(_)) => list
            .iter()
            .map(|e| string(e).map(|s| literal(ScalarValue::Utf8(Some(s)))))
            .collect(),
        _ => list
            .iter()
            .map(|e| number(e).map(|n| literal(ScalarValue::Int64(Some(n)))))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use crate::planner::{CatalogReader, Planner, RelationDesc, RelationKind};

    #[derive(Debug)]
    struct OneTable;

    impl CatalogReader for OneTable {
        fn relation(&self, name: &str) -> Option<RelationDesc> {
            (name == "t").then(|| RelationDesc {
                id: 1,
                name: "t".into(),
                kind: RelationKind::Table,
                schema: Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Int64, false),
                    Field::new("k", DataType::Utf8, false),
                    Field::new("v", DataType::Int32, true),
                ])),
                view_plan: None,
                definition: String::new(),
            })
        }
        fn relation_names(&self) -> Vec<String> {
            vec!["t".into()]
        }
        fn system_table(&self, _: &str, _: &str) -> Option<arrow::array::RecordBatch> {
            None
        }
        fn system_table_names(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
    }

    fn parse(sql: &str) -> datafusion::sql::sqlparser::ast::Statement {
        match crate::statement::parse_one(sql).unwrap() {
            crate::statement::Statement::Sql(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn long_lists_bind_to_what_the_planner_makes() {
        let planner = Planner::new(Arc::new(OneTable));
        let ints: Vec<String> = (0..40)
            .map(|i| {
                if i % 4 == 0 {
                    format!("-{i}")
                } else {
                    i.to_string()
                }
            })
            .collect();
        let strings: Vec<String> = (0..20).map(|i| format!("'k''{i}'")).collect();
        let (ints, strings) = (ints.join(", "), strings.join(", "));
        for sql in [
            format!("UPDATE t SET v = v + 1 WHERE id IN ({ints})"),
            format!("DELETE FROM t WHERE id NOT IN ({ints}) AND k IN ({strings})"),
            format!("SELECT id IN ({ints}) AS b, k FROM t WHERE k NOT IN ({strings})"),
            format!("SELECT * FROM t WHERE id IN (SELECT id FROM t WHERE v IN ({ints}))"),
            // v is an int: the planner's Int64 constants are compared as
            // it would compare them.
            format!("SELECT count(*) FROM t WHERE v IN ({ints}, 9223372036854775807)"),
        ] {
            let mut short = parse(&sql);
            let taken = super::take(&mut short);
            assert!(!taken.is_empty(), "{sql}");
            let fast = planner.bind(parse(&sql), &sql).await.unwrap();
            let plain = planner
                .state()
                .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(parse(
                    &sql,
                ))))
                .await
                .unwrap();
            assert_eq!(fast, plain, "{sql}");
            assert_eq!(
                fast.display_indent_schema().to_string(),
                plain.display_indent_schema().to_string()
            );
        }
        // Not every item a constant of one kind: left to the planner.
        for list in [
            format!("{ints}, 'x'"),
            format!("{ints}, 1.5"),
            format!("{ints}, 99999999999999999999"),
            format!("{ints}, v"),
        ] {
            let mut s = parse(&format!("SELECT * FROM t WHERE id IN ({list})"));
            assert!(super::take(&mut s).is_empty(), "{list}");
        }
        // A statement that does not bind says so as written.
        let bad = format!("SELECT * FROM t WHERE nope IN ({ints})");
        let err = planner.bind(parse(&bad), &bad).await.unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let mut s = parse(&bad);
        let taken = super::take(&mut s);
        super::put_back(&mut s, taken);
        assert_eq!(s, parse(&bad));
    }
}
