//! Statement splitting and Weir's own statements.
//!
//! A simple-query string may hold several statements. This module cuts it at
//! top-level semicolons (using sqlparser's tokenizer, so quoted semicolons are
//! safe), then parses each piece: Weir's own syntax (`SUBSCRIBE`, `SHOW ...`,
//! `COPY ... FROM STDIN`, transaction control) here, everything else with
//! sqlparser's PostgreSQL dialect.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::constant_lists::LONG_LIST;
use crate::error::{SqlError, line_col_to_position};

/// One statement cut out of a query string.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    pub statement: Statement,
    /// The statement's own text.
    pub sql: String,
    /// Characters that precede this statement in the original string; add
    /// it to positions reported against `sql`.
    pub offset: usize,
}

/// The statements Weir understands.
#[derive(Debug, Clone)]
pub enum Statement {
    /// Anything sqlparser parses: DDL, DML, queries, EXPLAIN.
    Sql(Box<ast::Statement>),
    /// `SUBSCRIBE [TO] name` or `SUBSCRIBE [TO] (query)`; `copy_out` when
    /// wrapped in `COPY (...) TO STDOUT`, which psql streams as it arrives.
    Subscribe {
        target: SubscribeTarget,
        copy_out: bool,
    },
    Show(Show),
    Copy(CopyFrom),
    /// BEGIN, COMMIT, ROLLBACK and friends: each statement commits on its
    /// own, so these only acknowledge.
    Transaction(TransactionOp),
    /// `SET`, `RESET`, `DISCARD`: accepted and acknowledged.
    SetVariable {
        tag: &'static str,
    },
    /// Secrets, connections and sources.
    Source(crate::source_sql::SourceStatement),
}

#[derive(Debug, Clone)]
pub enum SubscribeTarget {
    Name(String),
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOp {
    Begin,
    Commit,
    Rollback,
}

#[derive(Debug, Clone)]
pub enum Show {
    Tables,
    /// Active subscriptions (ids and the time each started at).
    Subscriptions,
    Views,
    MaterializedViews,
    Columns(String),
    CreateTable(String),
    CreateView(String),
    CreateMaterializedView(String),
    Variable(String),
    Sources,
    Connections,
    Secrets,
}

/// `COPY name [(columns)] FROM STDIN [options]`.
#[derive(Debug, Clone)]
pub struct CopyFrom {
    pub table: String,
    pub columns: Vec<String>,
    pub csv: bool,
    pub header: bool,
    pub delimiter: Option<char>,
    pub null: Option<String>,
}

/// Split `sql` into statements and parse each one.
pub fn parse(sql: &str) -> Result<Vec<ParsedStatement>, SqlError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax {
            message: e.message.clone(),
            position: line_col_to_position(sql, e.location.line as usize, e.location.column as usize),
        })?;
    // Byte offsets of top-level semicolons.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let byte_at = |line: u64, col: u64| -> usize {
        let start = line_starts[(line as usize).saturating_sub(1).min(line_starts.len() - 1)];
        sql[start..]
            .char_indices()
            .nth((col as usize).saturating_sub(1))
            .map(|(i, _)| start + i)
            .unwrap_or(sql.len())
    };
    // Each statement's text (up to a top-level semicolon) and tokens.
    let mut cuts = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t.token == Token::SemiColon {
            cuts.push((byte_at(t.span.start.line, t.span.start.column), i));
        }
    }
    cuts.push((sql.len(), tokens.len()));
    let mut out = Vec::new();
    let (mut start, mut first) = (0, 0);
    for (cut, last) in cuts {
        let piece = &sql[start..cut];
        if !piece.trim().is_empty() {
            let offset = sql[..start].chars().count();
            let statement =
                parse_tokens(piece, &tokens[first..last], (sql, offset)).map_err(|e| e.offset(offset))?;
            out.push(ParsedStatement {
                statement,
                sql: piece.to_string(),
                offset,
            });
        }
        start = (cut + 1).min(sql.len());
        first = (last + 1).min(tokens.len());
    }
    Ok(out)
}

fn words(tokens: &[TokenWithSpan]) -> Vec<Word> {
    tokens
        .iter()
        .filter_map(|t| match &t.token {
            Token::Word(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

fn ident(w: &Word) -> String {
    if w.quote_style.is_some() {
        w.value.clone()
    } else {
        w.value.to_ascii_lowercase()
    }
}

/// Parse one statement (no top-level semicolons).
pub fn parse_one(sql: &str) -> Result<Statement, SqlError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax {
            message: e.message.clone(),
            position: line_col_to_position(sql, e.location.line as usize, e.location.column as usize),
        })?;
    parse_tokens(sql, &tokens, (sql, 0))
}

/// Parse statement `sql`, already tokenized as `tokens` (whose locations
/// are in `whole.0`, where `sql` starts at character `whole.1`); error
/// positions are within `sql`. Tokenizing once matters: a 1,000-key
/// `UPDATE ... IN (...)` spends as long in the tokenizer as in the parser.
fn parse_tokens(sql: &str, tokens: &[TokenWithSpan], whole: (&str, usize)) -> Result<Statement, SqlError> {
    let ws = words(tokens);
    let kw: Vec<String> = ws.iter().map(|w| w.value.to_ascii_uppercase()).collect();
    let first = kw.first().map(String::as_str).unwrap_or("");
    let second = kw.get(1).map(String::as_str).unwrap_or("");
    if crate::source_sql::recognizes(first, second) {
        return crate::source_sql::parse(sql).map(Statement::Source);
    }
    match first {
        "SUBSCRIBE" => return parse_subscribe(sql, false),
        "COPY" if kw.iter().any(|k| k == "STDOUT") => return parse_copy_to(sql),
        "SHOW" => return parse_show(sql, &ws, &kw),
        "COPY" if kw.iter().any(|k| k == "STDIN") => return parse_copy(sql),
        "BEGIN" | "START" => return Ok(Statement::Transaction(TransactionOp::Begin)),
        "COMMIT" | "END" => return Ok(Statement::Transaction(TransactionOp::Commit)),
        "ROLLBACK" | "ABORT" => return Ok(Statement::Transaction(TransactionOp::Rollback)),
        "SET" => return Ok(Statement::SetVariable { tag: "SET" }),
        "RESET" => return Ok(Statement::SetVariable { tag: "RESET" }),
        "DISCARD" => return Ok(Statement::SetVariable { tag: "DISCARD ALL" }),
        _ => {}
    }
    let (tokens, mut lists) = constant_in_lists(empty_in_lists(tokens));
    let mut stmts = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| match parser_error(e, whole.0) {
            SqlError::Syntax { message, position } => SqlError::Syntax {
                message,
                position: position.map(|p| p.saturating_sub(whole.1).max(1)),
            },
            other => other,
        })?;
    if let Some(statement) = stmts.first()
        && let Err(e) = check_depth(statement)
    {
        stmts.into_iter().for_each(dismantle);
        return Err(e);
    }
    if !lists.is_empty() {
        for statement in &mut stmts {
            let _ = ast::visit_expressions_mut(statement, |e| {
                if let ast::Expr::InList { list, .. } = e
                    && let [ast::Expr::Value(v)] = list.as_slice()
                    && let ast::Value::Placeholder(p) = &v.value
                    && let Some(i) = p.strip_prefix(LIST_MARK).and_then(|i| i.parse::<usize>().ok())
                    && let Some(constants) = lists.get_mut(i)
                {
                    *list = std::mem::take(constants);
                }
                ControlFlow::<()>::Continue(())
            });
        }
    }
    match stmts.len() {
        1 => Ok(Statement::Sql(Box::new(stmts.remove(0)))),
        _ => Err(SqlError::Syntax {
            message: "expected exactly one statement".into(),
            position: None,
        }),
    }
}

/// The deepest expression nesting a statement may have. The parser
/// builds a chain like `a + a + ... + a` without recursing, but cloning,
/// dropping, planning and evaluating it all recurse once per level.
const MAX_EXPRESSION_DEPTH: usize = 1_000;

/// Refuse a statement whose expressions nest deeper than
/// [`MAX_EXPRESSION_DEPTH`], looking no deeper than that.
fn check_depth(statement: &ast::Statement) -> Result<(), SqlError> {
    struct Depth(usize);
    impl ast::Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &ast::Expr) -> ControlFlow<()> {
            self.0 += 1;
            if self.0 > MAX_EXPRESSION_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &ast::Expr) -> ControlFlow<()> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    match ast::Visit::visit(statement, &mut Depth(0)) {
        ControlFlow::Break(()) => Err(SqlError::TooDeep(MAX_EXPRESSION_DEPTH)),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Drop `statement` one expression level at a time: dropping a chain too
/// deep for [`check_depth`] in one go would recurse once per level.
fn dismantle(mut statement: ast::Statement) {
    /// Moves each expression it meets out into `taken`, leaving a NULL
    /// behind, so a visit goes one level into expressions and no further;
    /// the first expression met is left in place when `keep_root` holds.
    struct Take {
        taken: Vec<ast::Expr>,
        keep_root: bool,
    }
    impl ast::VisitorMut for Take {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut ast::Expr) -> ControlFlow<()> {
            if std::mem::take(&mut self.keep_root) {
                return ControlFlow::Continue(());
            }
            let null = ast::Expr::Value(ast::Value::Null.into());
            self.taken.push(std::mem::replace(e, null));
            ControlFlow::Continue(())
        }
    }
    let mut take = Take {
        taken: Vec::new(),
        keep_root: false,
    };
    let _ = ast::VisitMut::visit(&mut statement, &mut take);
    while let Some(mut e) = take.taken.pop() {
        take.keep_root = true;
        let _ = ast::VisitMut::visit(&mut e, &mut take);
    }
}

/// `tokens`, with each empty list of `IN ()` made an empty subquery,
/// `IN (SELECT NULL WHERE false)`: SQLite's and the SQL logic tests'
/// reading (`x IN ()` is false and `x NOT IN ()` true, whatever `x`, NULL
/// included), where PostgreSQL's grammar has no empty list.
fn empty_in_lists(tokens: &[TokenWithSpan]) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    // Indices in `out` of the last two tokens that are not whitespace.
    let mut last: [Option<usize>; 2] = [None, None];
    for t in tokens {
        if t.token == Token::RParen
            && let [Some(word), Some(open)] = last
            && out[open].token == Token::LParen
            && matches!(&out[word].token, Token::Word(w) if w.keyword == datafusion::sql::sqlparser::keywords::Keyword::IN)
        {
            for k in ["SELECT", "NULL", "WHERE", "FALSE"] {
                out.push(TokenWithSpan::new(Token::make_keyword(k), t.span));
                out.push(TokenWithSpan::new(
                    Token::Whitespace(datafusion::sql::sqlparser::tokenizer::Whitespace::Space),
                    t.span,
                ));
            }
        }
        if !matches!(t.token, Token::Whitespace(_)) {
            last = [last[1], Some(out.len())];
        }
        out.push(t.clone());
    }
    out
}

/// What stands for such a list while the parser runs, followed by its
/// index: a placeholder no tokenizer makes (a NUL cannot reach it).
const LIST_MARK: &str = "$\0in";

/// `tokens`, with the items of each long `IN (...)` list of constants
/// (numbers, negated or not, or quoted strings) taken out and one
/// placeholder left in their place; and those items as the expressions
/// the parser would have made of them. A `WHERE id IN (...)` of 1,000
/// keys (as feeds and ORMs send) otherwise spends more in the parser's
/// expression machinery, once per item, than in everything else it
/// parses. Positions of every other token are unchanged.
fn constant_in_lists(tokens: Vec<TokenWithSpan>) -> (Vec<TokenWithSpan>, Vec<Vec<ast::Expr>>) {
    use datafusion::sql::sqlparser::keywords::Keyword;
    let is_in = |t: &TokenWithSpan| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::IN);
    if !tokens.iter().any(is_in) {
        return (tokens, Vec::new());
    }
    let significant = |i: usize| !matches!(tokens[i].token, Token::Whitespace(_));
    // The constants of a list whose `(` is at `open`, and the index of
    // its `)`; `None` where it is not such a list.
    let constants = |open: usize| -> Option<(Vec<ast::Expr>, usize)> {
        let mut items = Vec::new();
        let mut i = open + 1;
        let next = |i: &mut usize| {
            while *i < tokens.len() && !significant(*i) {
                *i += 1;
            }
            let t = tokens.get(*i)?;
            *i += 1;
            Some(t)
        };
        loop {
            let mut t = next(&mut i)?;
            let negated = t.token == Token::Minus;
            if negated {
                t = next(&mut i)?;
            }
            let value = match &t.token {
                Token::Number(n, long) => ast::Value::Number(n.clone(), *long),
                Token::SingleQuotedString(s) if !negated => ast::Value::SingleQuotedString(s.clone()),
                _ => return None,
            };
            let value = ast::Expr::Value(value.with_span(t.span));
            items.push(if negated {
                ast::Expr::UnaryOp {
                    op: ast::UnaryOperator::Minus,
                    expr: Box::new(value),
                }
            } else {
                value
            });
            match next(&mut i)?.token {
                Token::Comma => continue,
                Token::RParen => return Some((items, i - 1)),
                _ => return None,
            }
        }
    };
    let mut out = Vec::with_capacity(tokens.len());
    let mut lists = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        out.push(tokens[i].clone());
        if is_in(&tokens[i]) {
            let open = (i + 1..tokens.len()).find(|&j| significant(j));
            if let Some(open) = open.filter(|&o| tokens[o].token == Token::LParen)
                && let Some((items, close)) = constants(open)
                && items.len() >= LONG_LIST
            {
                let mark = Token::Placeholder(format!("{LIST_MARK}{}", lists.len()));
                out.push(tokens[open].clone());
                out.push(TokenWithSpan::new(mark, tokens[open + 1].span));
                out.push(tokens[close].clone());
                lists.push(items);
                i = close + 1;
                continue;
            }
        }
        i += 1;
    }
    (out, lists)
}

/// Turn a sqlparser error into a syntax error with a position.
pub fn parser_error(e: ParserError, sql: &str) -> SqlError {
    let text = match &e {
        ParserError::ParserError(s) | ParserError::TokenizerError(s) => s.clone(),
        ParserError::RecursionLimitExceeded => "statement is too deeply nested".to_string(),
    };
    // sqlparser appends " at Line: L, Column: C".
    let (message, position) = match text.rfind(" at Line: ") {
        Some(i) => {
            let loc = &text[i + " at Line: ".len()..];
            let mut parts = loc.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse().ok());
            let col = parts.next().and_then(|c| c.trim().parse().ok());
            let pos = match (line, col) {
                (Some(l), Some(c)) => line_col_to_position(sql, l, c),
                _ => None,
            };
            (text[..i].to_string(), pos)
        }
        None => (text, None),
    };
    let near = position.and_then(|p| {
        sql.chars()
            .skip(p - 1)
            .collect::<String>()
            .split_whitespace()
            .next()
            .map(str::to_string)
    });
    let message = match near {
        Some(tok) if !message.contains("found: EOF") => {
            let tok: String = tok
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>();
            let tok = if tok.is_empty() {
                near_symbol(sql, position)
            } else {
                tok
            };
            format!("syntax error at or near \"{tok}\"")
        }
        _ => "syntax error at end of input".to_string(),
    };
    SqlError::Syntax { message, position }
}

fn near_symbol(sql: &str, position: Option<usize>) -> String {
    position
        .and_then(|p| sql.chars().nth(p - 1))
        .map(|c| c.to_string())
        .unwrap_or_default()
}

fn syntax(message: &str) -> SqlError {
    SqlError::Syntax {
        message: message.to_string(),
        position: None,
    }
}

/// `COPY (SUBSCRIBE ...) TO STDOUT`.
fn parse_copy_to(sql: &str) -> Result<Statement, SqlError> {
    let rest = sql.trim_start()["COPY".len()..].trim_start();
    let inner = rest.strip_prefix('(').and_then(|r| {
        let upper = r.to_ascii_uppercase();
        let end = upper.rfind("TO STDOUT")?;
        r[..end].trim_end().strip_suffix(')')
    });
    match inner {
        Some(inner) if inner.trim_start().to_ascii_uppercase().starts_with("SUBSCRIBE") => {
            parse_subscribe(inner, true)
        }
        _ => Err(SqlError::Unsupported(
            "COPY ... TO STDOUT other than COPY (SUBSCRIBE ...) TO STDOUT".into(),
        )),
    }
}

fn parse_subscribe(sql: &str, copy_out: bool) -> Result<Statement, SqlError> {
    let rest = sql.trim_start();
    let rest = rest["SUBSCRIBE".len()..].trim_start();
    let rest = if rest.len() >= 2
        && rest[..2].eq_ignore_ascii_case("TO")
        && rest[2..].starts_with(|c: char| c.is_whitespace() || c == '(')
    {
        rest[2..].trim_start()
    } else {
        rest
    };
    if let Some(inner) = rest.strip_prefix('(') {
        let end = inner
            .rfind(')')
            .ok_or_else(|| syntax("syntax error at end of input: expected \")\""))?;
        if !inner[end + 1..].trim().is_empty() {
            return Err(SqlError::Unsupported(format!(
                "SUBSCRIBE option \"{}\"",
                inner[end + 1..].trim()
            )));
        }
        return Ok(Statement::Subscribe {
            target: SubscribeTarget::Query(inner[..end].to_string()),
            copy_out,
        });
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, rest)
        .tokenize_with_location()
        .unwrap_or_default();
    let ws = words(&tokens);
    match ws.as_slice() {
        [name] => Ok(Statement::Subscribe {
            target: SubscribeTarget::Name(ident(name)),
            copy_out,
        }),
        [] => Err(syntax(
            "syntax error at end of input: SUBSCRIBE expects a name or a (query)",
        )),
        _ => Err(SqlError::Unsupported(format!(
            "SUBSCRIBE option \"{}\"",
            ws[1].value
        ))),
    }
}

fn parse_show(sql: &str, ws: &[Word], kw: &[String]) -> Result<Statement, SqlError> {
    let k: Vec<&str> = kw.iter().map(String::as_str).collect();
    let name_at = |i: usize| -> Result<String, SqlError> {
        ws.get(i)
            .map(ident)
            .ok_or_else(|| syntax("syntax error at end of input: expected a name"))
    };
    let show = match k.as_slice() {
        ["SHOW", "TABLES"] => Show::Tables,
        ["SHOW", "SUBSCRIPTIONS"] => Show::Subscriptions,
        ["SHOW", "VIEWS"] => Show::Views,
        ["SHOW", "MATERIALIZED", "VIEWS"] => Show::MaterializedViews,
        ["SHOW", "SOURCES"] => Show::Sources,
        ["SHOW", "CONNECTIONS"] => Show::Connections,
        ["SHOW", "SECRETS"] => Show::Secrets,
        ["SHOW", "COLUMNS", "FROM" | "IN", ..] => Show::Columns(last_name(sql, ws, 3)?),
        ["SHOW", "CREATE", "TABLE", ..] => Show::CreateTable(last_name(sql, ws, 3)?),
        ["SHOW", "CREATE", "VIEW", ..] => Show::CreateView(last_name(sql, ws, 3)?),
        ["SHOW", "CREATE", "MATERIALIZED", "VIEW", ..] => {
            Show::CreateMaterializedView(last_name(sql, ws, 4)?)
        }
        ["SHOW", _] => Show::Variable(name_at(1)?),
        ["SHOW", "TRANSACTION", "ISOLATION", "LEVEL"] => Show::Variable("transaction_isolation".into()),
        _ => {
            return Err(SqlError::Unsupported(format!("statement \"{}\"", sql.trim())));
        }
    };
    Ok(Statement::Show(show))
}

/// The (possibly schema-qualified) name starting at word `i`; the last part
/// names the relation.
fn last_name(_sql: &str, ws: &[Word], i: usize) -> Result<String, SqlError> {
    ws.last()
        .filter(|_| ws.len() > i)
        .map(ident)
        .ok_or_else(|| syntax("syntax error at end of input: expected a name"))
}

fn parse_copy(sql: &str) -> Result<Statement, SqlError> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| syntax(&e.message))?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect::<Vec<_>>();
    let mut i = 1;
    let word = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        _ => None,
    };
    let mut table = word(tokens.get(i))
        .map(|w| ident(&w))
        .ok_or_else(|| syntax("syntax error: COPY expects a table name"))?;
    i += 1;
    while tokens.get(i) == Some(&Token::Period) {
        table = word(tokens.get(i + 1))
            .map(|w| ident(&w))
            .ok_or_else(|| syntax("syntax error in COPY table name"))?;
        i += 2;
    }
    let mut columns = Vec::new();
    if tokens.get(i) == Some(&Token::LParen) {
        i += 1;
        while let Some(w) = word(tokens.get(i)) {
            columns.push(ident(&w));
            i += 1;
            if tokens.get(i) == Some(&Token::Comma) {
                i += 1;
            }
        }
        if tokens.get(i) != Some(&Token::RParen) {
            return Err(syntax("syntax error in COPY column list"));
        }
        i += 1;
    }
    let upper = |t: Option<&Token>| word(t).map(|w| w.value.to_ascii_uppercase());
    if upper(tokens.get(i)).as_deref() != Some("FROM") || upper(tokens.get(i + 1)).as_deref() != Some("STDIN")
    {
        return Err(SqlError::Unsupported(
            "COPY other than COPY ... FROM STDIN".into(),
        ));
    }
    i += 2;
    let mut copy = CopyFrom {
        table,
        columns,
        csv: false,
        header: false,
        delimiter: None,
        null: None,
    };
    // Options: either `WITH (FORMAT csv, HEADER true, ...)` or the legacy
    // `[WITH] CSV HEADER DELIMITER 'x' NULL 'y'` form.
    let rest: Vec<Token> = tokens[i..]
        .iter()
        .filter(|t| !matches!(t, Token::LParen | Token::RParen | Token::Comma | Token::EOF))
        .cloned()
        .collect();
    let mut j = 0;
    let string_at = |j: usize| -> Option<String> {
        match rest.get(j) {
            Some(Token::SingleQuotedString(s)) => Some(s.clone()),
            Some(Token::Word(w)) => Some(w.value.clone()),
            _ => None,
        }
    };
    while j < rest.len() {
        let key = match &rest[j] {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            other => {
                return Err(syntax(&format!(
                    "syntax error at or near \"{other}\" in COPY options"
                )));
            }
        };
        match key.as_str() {
            "WITH" | "BINARY" if key == "WITH" => j += 1,
            "CSV" => {
                copy.csv = true;
                j += 1;
            }
            "FORMAT" => {
                match string_at(j + 1).map(|s| s.to_ascii_lowercase()).as_deref() {
                    Some("csv") => copy.csv = true,
                    Some("text") => copy.csv = false,
                    Some(other) => {
                        return Err(SqlError::Unsupported(format!("COPY format \"{other}\"")));
                    }
                    None => return Err(syntax("syntax error: FORMAT expects a value")),
                }
                j += 2;
            }
            "HEADER" => {
                copy.header = true;
                match string_at(j + 1).map(|s| s.to_ascii_lowercase()).as_deref() {
                    Some("true" | "on" | "1") => j += 2,
                    Some("false" | "off" | "0") => {
                        copy.header = false;
                        j += 2
                    }
                    _ => j += 1,
                }
            }
            "DELIMITER" => {
                let d = string_at(j + 1).ok_or_else(|| syntax("syntax error: DELIMITER expects a string"))?;
                let mut cs = d.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => copy.delimiter = Some(c),
                    _ => {
                        return Err(SqlError::Plan(
                            "COPY delimiter must be a single one-byte character".into(),
                        ));
                    }
                }
                j += 2;
            }
            "NULL" => {
                copy.null =
                    Some(string_at(j + 1).ok_or_else(|| syntax("syntax error: NULL expects a string"))?);
                j += 2;
            }
            other => {
                return Err(SqlError::Unsupported(format!(
                    "COPY option \"{}\"",
                    other.to_ascii_lowercase()
                )));
            }
        }
    }
    Ok(Statement::Copy(copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let stmts = parse("SELECT ';'; SUBSCRIBE TO t; SHOW TABLES").unwrap();
        assert_eq!(stmts.len(), 3);
        assert!(
            matches!(stmts[1].statement, Statement::Subscribe { target: SubscribeTarget::Name(ref n), copy_out: false } if n == "t")
        );
        let copy = parse_one("COPY (SUBSCRIBE (SELECT 1)) TO STDOUT").unwrap();
        assert!(
            matches!(copy, Statement::Subscribe { target: SubscribeTarget::Query(ref q), copy_out: true } if q == "SELECT 1")
        );
        assert!(matches!(stmts[2].statement, Statement::Show(Show::Tables)));
        assert_eq!(stmts[1].offset, 11);
    }

    #[test]
    fn long_constant_in_lists_parse_as_the_parser_would() {
        let numbers: Vec<String> = (0..40)
            .map(|i| {
                if i % 3 == 0 {
                    format!("-{i}")
                } else {
                    i.to_string()
                }
            })
            .collect();
        let strings: Vec<String> = (0..20).map(|i| format!("'s''{i}'")).collect();
        let sql = format!(
            "UPDATE t SET v = v + 1 WHERE id IN ({}) AND k NOT IN ( {} ) AND z IN (1, 2.5e3, 3) \
             AND w IN ({}, x)",
            numbers.join(", "),
            strings.join(" ,"),
            numbers.join(",")
        );
        let Statement::Sql(ast) = parse_one(&sql).unwrap() else {
            panic!("not SQL");
        };
        let plain = Parser::parse_sql(&PostgreSqlDialect {}, &sql).unwrap().remove(0);
        assert_eq!(*ast, plain);
        assert_eq!(ast.to_string(), plain.to_string());
        // An error after a long list still points at its own token.
        let bad = format!("SELECT * FROM t WHERE id IN ({}) AND )", numbers.join(","));
        let Err(SqlError::Syntax { position, .. }) = parse_one(&bad) else {
            panic!("no syntax error");
        };
        assert_eq!(position, Some(bad.rfind(')').unwrap() + 1));
    }

    #[test]
    fn an_empty_in_list_is_an_empty_subquery() {
        let Statement::Sql(ast) = parse_one("SELECT a IN ( ), a NOT IN () FROM t WHERE f(x) IN (1)").unwrap()
        else {
            panic!("not SQL");
        };
        assert_eq!(
            ast.to_string(),
            "SELECT a IN (SELECT NULL WHERE false), a NOT IN (SELECT NULL WHERE false) FROM t WHERE f(x) IN (1)"
        );
        // A call with no arguments is no list.
        assert!(parse_one("SELECT now() IN (SELECT now())").is_ok());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("SELECT 1; SELEC 2").unwrap_err();
        assert_eq!(err.position(), Some(11));
        // On a later line of a later statement, from the one tokenization.
        let alone = parse("SELECT a FROM t WHERE AND 1").unwrap_err();
        let err = parse("SELECT 1;\nSELECT a FROM t WHERE AND 1").unwrap_err();
        assert_eq!(err.position(), alone.position().map(|p| p + 10));
        assert_eq!(err.to_string(), alone.to_string());
    }

    #[test]
    fn copy_options() {
        match parse_one("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap() {
            Statement::Copy(c) => {
                assert_eq!(c.table, "t");
                assert_eq!(c.columns, vec!["a", "b"]);
                assert!(c.csv && c.header);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
