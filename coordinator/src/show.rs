//! `SHOW` statements, answered from the catalog.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_sql::source_sql::ObjectKind;
use weir_sql::statement::Show;
use weir_sql::{RelationKind, SqlError};

use crate::error::AdapterError;
use crate::sequencer::{Coordinator, ExecuteResult};

/// Server settings `SHOW` reports, as PostgreSQL 15 names them.
pub const SETTINGS: &[(&str, &str)] = &[
    ("server_version", "15.0"),
    ("server_version_num", "150000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("intervalstyle", "postgres"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "serializable"),
    ("default_transaction_isolation", "serializable"),
    ("search_path", "public"),
    ("max_identifier_length", "63"),
    ("application_name", ""),
    ("extra_float_digits", "1"),
];

fn columns(show: &Show) -> Vec<&'static str> {
    match show {
        Show::Tables | Show::Views | Show::MaterializedViews => vec!["name"],
        Show::Subscriptions => vec!["id", "as_of"],
        Show::Columns(_) => vec!["name", "nullable", "type"],
        Show::CreateTable(_) | Show::CreateView(_) | Show::CreateMaterializedView(_) => {
            vec!["name", "create_sql"]
        }
        Show::Variable(_) => vec![],
        Show::Sources => vec!["name", "type", "connection", "publication", "state"],
        Show::Connections => vec!["name", "type"],
        Show::Secrets => vec!["name"],
    }
}

pub fn schema(coord: &Coordinator, show: &Show) -> Result<SchemaRef, AdapterError> {
    let names = match show {
        Show::Variable(v) => vec![v.clone()],
        _ => {
            let _ = coord;
            columns(show).into_iter().map(String::from).collect()
        }
    };
    Ok(Arc::new(Schema::new(
        names
            .into_iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )))
}

pub fn show(coord: &Coordinator, show: &Show) -> Result<ExecuteResult, AdapterError> {
    let rows: Vec<Vec<String>> = match show {
        Show::Tables => names(coord, RelationKind::Table),
        Show::Subscriptions => coord
            .controller()
            .subscriptions()
            .into_iter()
            .map(|(id, t)| vec![id.to_string(), t.to_string()])
            .collect(),
        Show::Views => names(coord, RelationKind::View),
        Show::Sources => {
            let sources = coord.catalog.sources();
            let mut rows: Vec<Vec<String>> = sources
                .values()
                .map(|s| {
                    let status = s.status.lock().expect("status lock").clone();
                    let (kind, connection, publication) = s.describe();
                    vec![
                        s.name.clone(),
                        kind,
                        connection.to_string(),
                        publication.to_string(),
                        status.state,
                    ]
                })
                .collect();
            rows.sort();
            rows
        }
        Show::Connections => objects(coord, ObjectKind::Connection)
            .into_iter()
            .map(|n| vec![n, "postgres".into()])
            .collect(),
        // Names only: a secret's value is never shown.
        Show::Secrets => objects(coord, ObjectKind::Secret)
            .into_iter()
            .map(|n| vec![n])
            .collect(),
        Show::MaterializedViews => names(coord, RelationKind::MaterializedView),
        Show::Columns(name) => {
            let e = coord.entry(name)?;
            e.columns
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        if c.nullable { "t" } else { "f" }.into(),
                        c.sql_type.clone(),
                    ]
                })
                .collect()
        }
        Show::CreateTable(name) | Show::CreateView(name) | Show::CreateMaterializedView(name) => {
            let expected = match show {
                Show::CreateTable(_) => RelationKind::Table,
                Show::CreateView(_) => RelationKind::View,
                _ => RelationKind::MaterializedView,
            };
            let e = coord.entry(name)?;
            if e.kind != expected {
                return Err(AdapterError::WrongObjectType {
                    name: name.clone(),
                    expected: crate::catalog::kind_name(expected),
                });
            }
            vec![vec![e.name.clone(), e.create_sql.clone()]]
        }
        Show::Variable(v) => {
            let value = SETTINGS
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(v))
                .map(|(_, val)| val.to_string())
                .ok_or_else(|| {
                    AdapterError::Sql(SqlError::Plan(format!(
                        "unrecognized configuration parameter \"{v}\""
                    )))
                })?;
            vec![vec![value]]
        }
    };
    let schema = schema(coord, show)?;
    let arrays: Vec<ArrayRef> = (0..schema.fields().len())
        .map(|c| {
            Arc::new(StringArray::from(
                rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| AdapterError::Internal(e.to_string()))?;
    Ok(ExecuteResult::Rows {
        schema,
        batches: vec![batch],
    })
}

fn names(coord: &Coordinator, kind: RelationKind) -> Vec<Vec<String>> {
    coord
        .catalog
        .entries()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| vec![e.name])
        .collect()
}

fn objects(coord: &Coordinator, kind: ObjectKind) -> Vec<String> {
    coord
        .catalog
        .objects()
        .into_iter()
        .filter(|o| o.kind == kind)
        .map(|o| o.name)
        .collect()
}
