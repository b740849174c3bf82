//! The one user-facing error type, and its mapping to SQLSTATE.
//!
//! Every failure a client can see is an [`AdapterError`]. [`AdapterError::code`]
//! is an exhaustive match with no catch-all arm, so a new variant does not
//! compile until it has a SQLSTATE.

use pgwire::error::{ErrorInfo, PgWireError};
use weir_sql::SqlError;
use weir_sql::error::EvalErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("duplicate key value violates unique constraint \"{constraint}\"")]
    UniqueViolation { constraint: String, detail: String },
    #[error("could not create unique index \"{index}\"")]
    UniqueIndexDuplicate { index: String, detail: String },
    #[error("cannot drop index {index} because constraint {index} on table {table} requires it")]
    IndexRequired { index: String, table: String },
    #[error("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint")]
    NotNullViolation { table: String, column: String },
    #[error("value too long for type character varying({0})")]
    StringTooLong(u64),
    #[error("cannot drop {kind} {name} because other objects depend on it")]
    DependentObjects {
        kind: &'static str,
        name: String,
        dependents: Vec<String>,
    },
    #[error("\"{name}\" is not a {expected}")]
    WrongObjectType { name: String, expected: &'static str },
    #[error("{0}")]
    Evaluation(String),
    #[error("invalid input syntax: {0}")]
    InvalidTextRepresentation(String),
    #[error("{0}")]
    BadCopyFile(String),
    #[error("column \"{column}\" of relation \"{table}\" does not exist")]
    UndefinedColumn { table: String, column: String },
    #[error("{0} not supported")]
    Unsupported(String),
    #[error("canceling statement due to user request")]
    Canceled,
    /// The state store failed: the change was not made durable, and the
    /// server stops so that a restart recovers from what is durable.
    #[error("could not make the change durable: {0}")]
    StateStore(String),
    /// Another process took over the state: nothing more is written here.
    #[error("terminating: {0}")]
    Fenced(String),
    #[error("{kind} \"{name}\" does not exist")]
    UndefinedObject { kind: &'static str, name: String },
    #[error("an object named \"{0}\" already exists")]
    DuplicateObject(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("cannot modify table \"{table}\": it is fed by source \"{feeder}\"")]
    SourceFed { table: String, feeder: String },
    #[error(transparent)]
    Upstream(weir_connectors::postgres::PgError),
    /// A file source's files cannot be listed or read.
    #[error("could not read files: {0}")]
    FileStore(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdapterError {
    /// The SQLSTATE of this error.
    pub fn code(&self) -> &'static str {
        match self {
            AdapterError::Sql(e) => match e {
                SqlError::Syntax { .. } => "42601",
                SqlError::UndefinedTable { .. } => "42P01",
                SqlError::UndefinedColumn { .. } => "42703",
                SqlError::UndefinedFunction { .. } => "42883",
                SqlError::DatatypeMismatch { .. } => "42804",
                SqlError::DuplicateRelation(_) => "42P07",
                SqlError::DuplicateColumn(_) => "42701",
                SqlError::InvalidTableDefinition(_) => "42P16",
                SqlError::UndefinedType(_) => "42704",
                SqlError::Unsupported(_) => "0A000",
                SqlError::InvalidRecursion(_) => "42P19",
                SqlError::TooDeep(_) => "54001",
                SqlError::Evaluation { code, .. } => eval_code(*code),
                SqlError::Plan(_) => "42000",
            },
            AdapterError::UniqueViolation { .. } | AdapterError::UniqueIndexDuplicate { .. } => "23505",
            AdapterError::IndexRequired { .. } => "2BP01",
            AdapterError::NotNullViolation { .. } => "23502",
            AdapterError::StringTooLong(_) => "22001",
            AdapterError::DependentObjects { .. } => "2BP01",
            AdapterError::WrongObjectType { .. } => "42809",
            AdapterError::Evaluation(m) => eval_code(EvalErrorCode::classify(m)),
            AdapterError::InvalidTextRepresentation(_) => "22P02",
            AdapterError::BadCopyFile(_) => "22P04",
            AdapterError::UndefinedColumn { .. } => "42703",
            AdapterError::Unsupported(_) => "0A000",
            AdapterError::Canceled => "57014",
            AdapterError::StateStore(_) => "58030",
            AdapterError::Fenced(_) => "57P01",
            AdapterError::UndefinedObject { .. } => "42704",
            AdapterError::DuplicateObject(_) => "42710",
            AdapterError::InvalidParameter(_) => "22023",
            AdapterError::SourceFed { .. } => "42809",
            AdapterError::Upstream(e) => {
                use weir_connectors::postgres::PgError;
                match e {
                    PgError::Unreachable { .. } | PgError::Tls { .. } => "08001",
                    PgError::Authentication { .. } => "28P01",
                    PgError::WalLevel { .. } => "55000",
                    PgError::NoReplication { .. } => "42501",
                    PgError::MissingPublication(_) | PgError::NotPublished(_) => "42704",
                    PgError::NoReplicaIdentity { .. } => "55000",
                    PgError::Upstream(_) => "58000",
                }
            }
            AdapterError::FileStore(_) => "58030",
            AdapterError::Internal(_) => "XX000",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            AdapterError::UniqueViolation { detail, .. }
            | AdapterError::UniqueIndexDuplicate { detail, .. } => Some(detail.clone()),
            AdapterError::DependentObjects { dependents, .. } => Some(
                dependents
                    .iter()
                    .map(|d| format!("{d} depends on it"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            AdapterError::DependentObjects { .. } => {
                Some("Use DROP ... CASCADE to drop the dependent objects too.".into())
            }
            AdapterError::IndexRequired { index, table } => Some(format!(
                "You can drop constraint {index} on table {table} instead."
            )),
            AdapterError::Upstream(e) => e.hint(),
            _ => None,
        }
    }

    pub fn into_error_info(self) -> ErrorInfo {
        let mut info = ErrorInfo::new("ERROR".to_owned(), self.code().to_owned(), self.to_string());
        info.detail = self.detail();
        info.hint = self.hint();
        if let AdapterError::Sql(e) = &self {
            info.position = e.position().map(|p| p.to_string());
        }
        info
    }
}

fn eval_code(code: EvalErrorCode) -> &'static str {
    match code {
        EvalErrorCode::DivisionByZero => "22012",
        EvalErrorCode::InvalidTextRepresentation => "22P02",
        EvalErrorCode::NumericOutOfRange => "22003",
        EvalErrorCode::CardinalityViolation => "21000",
        EvalErrorCode::Other => "XX000",
    }
}

impl From<AdapterError> for PgWireError {
    fn from(e: AdapterError) -> Self {
        PgWireError::UserError(Box::new(e.into_error_info()))
    }
}

impl From<weir_persist::PersistError> for AdapterError {
    fn from(e: weir_persist::PersistError) -> Self {
        match e {
            e @ weir_persist::PersistError::Fenced { .. } => AdapterError::Fenced(e.to_string()),
            e => AdapterError::StateStore(e.to_string()),
        }
    }
}

impl From<datafusion::error::DataFusionError> for AdapterError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        AdapterError::Sql(SqlError::from_datafusion(e, ""))
    }
}
