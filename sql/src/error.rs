//! Errors raised while parsing, binding and lowering SQL.
//!
//! Each variant names one user-facing failure class; the coordinator maps
//! them to SQLSTATE codes in one exhaustive match.

use datafusion::error::DataFusionError;

/// An error found while turning SQL text into a plan.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse. `position` is a 1-based character offset.
    #[error("{message}")]
    Syntax {
        message: String,
        position: Option<usize>,
    },
    #[error("relation \"{name}\" does not exist")]
    UndefinedTable { name: String, position: Option<usize> },
    #[error("{message}")]
    UndefinedColumn {
        message: String,
        position: Option<usize>,
    },
    #[error("{message}")]
    UndefinedFunction {
        message: String,
        position: Option<usize>,
    },
    #[error("{message}")]
    DatatypeMismatch {
        message: String,
        position: Option<usize>,
    },
    #[error("relation \"{0}\" already exists")]
    DuplicateRelation(String),
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    #[error("multiple primary keys for table \"{0}\" are not allowed")]
    InvalidTableDefinition(String),
    #[error("type \"{0}\" does not exist")]
    UndefinedType(String),
    /// A construct Weir does not support yet; the string names it.
    #[error("{0} not supported")]
    Unsupported(String),
    /// A `WITH RECURSIVE` whose recursive term uses what SQL forbids there.
    #[error("{0} are not allowed in a recursive query's recursive term")]
    InvalidRecursion(String),
    /// Expressions nested deeper than a statement may (PostgreSQL stops at
    /// its stack limit the same way); the number is the limit.
    #[error("stack depth limit exceeded: expressions nest more than {0} levels deep")]
    TooDeep(usize),
    /// A plan-time evaluation error (e.g. a constant division by zero).
    #[error("{message}")]
    Evaluation { code: EvalErrorCode, message: String },
    /// Anything else DataFusion rejected while planning.
    #[error("{0}")]
    Plan(String),
}

/// The SQLSTATE classes that runtime evaluation errors fall into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalErrorCode {
    DivisionByZero,
    InvalidTextRepresentation,
    NumericOutOfRange,
    /// A scalar subquery returned several rows.
    CardinalityViolation,
    Other,
}

impl EvalErrorCode {
    /// Classify an evaluation error message the way PostgreSQL would.
    pub fn classify(message: &str) -> Self {
        let m = message.to_ascii_lowercase();
        if m.contains("divide by zero") || m.contains("division by zero") {
            Self::DivisionByZero
        } else if m.contains(crate::single_row::MORE_THAN_ONE_ROW) || m.contains("returned more than one row")
        {
            Self::CardinalityViolation
        } else if m.contains("overflow") || m.contains("out of range") {
            Self::NumericOutOfRange
        } else if m.contains("cannot cast")
            || m.contains("cast error")
            || m.contains("invalid input syntax")
            || m.contains("parser error")
            || m.contains("can't parse")
            || m.contains("cannot parse")
            || m.contains("error parsing")
        {
            Self::InvalidTextRepresentation
        } else {
            Self::Other
        }
    }
}

/// Strip DataFusion's prefixes ("Error during planning: ...") from a message.
pub fn clean_message(e: &DataFusionError) -> String {
    let mut inner = e;
    loop {
        match inner {
            DataFusionError::Context(_, e) => inner = e,
            DataFusionError::Diagnostic(_, e) => inner = e,
            DataFusionError::Shared(e) => inner = e.as_ref(),
            _ => break,
        }
    }
    let text = match inner {
        DataFusionError::Plan(s)
        | DataFusionError::Execution(s)
        | DataFusionError::NotImplemented(s)
        | DataFusionError::Internal(s) => s.clone(),
        DataFusionError::SQL(e, _) => e.to_string(),
        DataFusionError::ArrowError(e, _) => e.to_string(),
        DataFusionError::SchemaError(e, _) => e.to_string(),
        other => other.to_string(),
    };
    let text = text
        .trim_start_matches("Arrow error: ")
        .trim_start_matches("Compute error: ")
        .trim_start_matches("Cast error: ")
        .trim_start_matches("Divide by zero error")
        .to_string();
    if text.is_empty() {
        "division by zero".to_string()
    } else {
        text
    }
}

impl SqlError {
    /// Classify an error DataFusion raised while planning `sql`.
    pub fn from_datafusion(e: DataFusionError, sql: &str) -> Self {
        let position = diagnostic_position(&e, sql);
        let message = clean_message(&e);
        let lower = message.to_ascii_lowercase();
        if let Some(name) = missing_table(&lower, &message) {
            let position = position.or_else(|| find_ident(sql, &name));
            return SqlError::UndefinedTable { name, position };
        }
        if lower.contains("no field named") || lower.contains("column") && lower.contains("not found") {
            let column = match lower.find("field named ") {
                Some(i) => message[i + "field named ".len()..]
                    .split(['\n', ' '])
                    .next()
                    .map(|c| c.trim_end_matches('.').to_string()),
                None => quoted(&message),
            };
            let position = position.or_else(|| {
                column
                    .as_deref()
                    .and_then(|c| find_ident(sql, c.rsplit('.').next().unwrap_or(c)))
            });
            let message = match column {
                Some(c) => format!("column \"{}\" does not exist", c.replace('"', "")),
                None => message,
            };
            return SqlError::UndefinedColumn { message, position };
        }
        if let Some(rest) = lower.strip_prefix("invalid function '") {
            let name = rest.split('\'').next().unwrap_or(rest).to_string();
            let position = position.or_else(|| find_ident(sql, &name));
            let message = format!("function {name} does not exist");
            return SqlError::UndefinedFunction { message, position };
        }
        if lower.contains("invalid function")
            || lower.contains("no function matches")
            || lower.contains("function") && lower.contains("does not exist")
            || lower.contains("failed to coerce arguments")
        {
            return SqlError::UndefinedFunction { message, position };
        }
        if lower.contains("cannot infer common")
            || lower.contains("cannot coerce")
            || lower.contains("cannot be coerced")
            || lower.contains("expected boolean")
            || lower.contains("must be boolean")
            || lower.contains("type mismatch")
            || lower.contains("unsupported cast")
            || lower.contains("cannot automatically convert")
            || lower.contains("can't be evaluated because")
        {
            return SqlError::DatatypeMismatch { message, position };
        }
        if lower.contains("does not support logical expression scalarsubquery") {
            return SqlError::Unsupported(
                "correlated scalar subqueries whose correlation is not an equality".into(),
            );
        }
        match &e {
            DataFusionError::NotImplemented(_) => SqlError::Unsupported(message),
            DataFusionError::SQL(..) => SqlError::Syntax { message, position },
            DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => SqlError::Evaluation {
                code: EvalErrorCode::classify(&message),
                message,
            },
            _ => {
                let code = EvalErrorCode::classify(&message);
                if code != EvalErrorCode::Other {
                    SqlError::Evaluation { code, message }
                } else {
                    SqlError::Plan(message)
                }
            }
        }
    }

    /// The 1-based character position of the offending token, if known.
    pub fn position(&self) -> Option<usize> {
        match self {
            SqlError::Syntax { position, .. }
            | SqlError::UndefinedTable { position, .. }
            | SqlError::UndefinedColumn { position, .. }
            | SqlError::UndefinedFunction { position, .. }
            | SqlError::DatatypeMismatch { position, .. } => *position,
            _ => None,
        }
    }

    /// Shift the position by `offset` characters (for statements cut out of a
    /// multi-statement string).
    pub fn offset(mut self, offset: usize) -> Self {
        match &mut self {
            SqlError::Syntax { position, .. }
            | SqlError::UndefinedTable { position, .. }
            | SqlError::UndefinedColumn { position, .. }
            | SqlError::UndefinedFunction { position, .. }
            | SqlError::DatatypeMismatch { position, .. } => {
                if let Some(p) = position {
                    *p += offset;
                }
            }
            _ => {}
        }
        self
    }
}

fn missing_table(lower: &str, message: &str) -> Option<String> {
    if lower.contains("table") && lower.contains("not found") {
        return quoted(message).map(|n| n.rsplit('.').next().unwrap_or(&n).to_string());
    }
    if lower.starts_with("relation \"") && lower.ends_with("does not exist") {
        return quoted(message);
    }
    None
}

/// The first single- or double-quoted word of a message.
fn quoted(message: &str) -> Option<String> {
    for q in ['\'', '"'] {
        if let Some(start) = message.find(q) {
            let rest = &message[start + 1..];
            if let Some(end) = rest.find(q) {
                return Some(rest[..end].to_string());
            }
        }
    }
    None
}

/// Position of DataFusion's diagnostic span, if it attached one.
fn diagnostic_position(e: &DataFusionError, sql: &str) -> Option<usize> {
    let span = e.diagnostic()?.span?;
    line_col_to_position(sql, span.start.line as usize, span.start.column as usize)
}

/// Convert a 1-based line/column pair to a 1-based character offset.
pub fn line_col_to_position(sql: &str, line: usize, column: usize) -> Option<usize> {
    if line == 0 || column == 0 {
        return None;
    }
    let mut pos = 0;
    for (i, l) in sql.split('\n').enumerate() {
        if i + 1 == line {
            return Some(pos + column);
        }
        pos += l.chars().count() + 1;
    }
    None
}

/// 1-based position of the first whole-word, case-insensitive occurrence of
/// `ident` in `sql`.
pub fn find_ident(sql: &str, ident: &str) -> Option<usize> {
    let hay: Vec<char> = sql.chars().collect();
    let needle: Vec<char> = ident.chars().collect();
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let word = |c: char| c.is_alphanumeric() || c == '_';
    for i in 0..=hay.len() - needle.len() {
        let matches = hay[i..i + needle.len()]
            .iter()
            .zip(&needle)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
        let before_ok = i == 0 || !word(hay[i - 1]);
        let after_ok = i + needle.len() == hay.len() || !word(hay[i + needle.len()]);
        if matches && before_ok && after_ok {
            return Some(i + 1);
        }
    }
    None
}
