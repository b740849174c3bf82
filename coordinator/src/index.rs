//! `CREATE INDEX` and `DROP INDEX`: indexes as catalog objects of the
//! relation they index ([`crate::catalog::Index`]).
//!
//! This module decides what an index statement may say and keeps the
//! catalog, the durable catalog and (for a `UNIQUE` index) the write path's
//! key indexes in step. What an index means to writes is `keys`'s; how
//! indexes are listed is `system`'s.

use datafusion::sql::sqlparser::ast;
use weir_sql::{RelationKind, SqlError};

use crate::catalog::{Entry, Index, IndexColumn};
use crate::controller::PeekTarget;
use crate::error::AdapterError;
use crate::keys::KeyIndexes;
use crate::sequencer::{Coordinator, ExecuteResult, command, ident, object_name, unsupported};

type Result<T> = std::result::Result<T, AdapterError>;

impl Coordinator {
    pub(crate) async fn create_index(&self, ci: &ast::CreateIndex, sql: &str) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        let table = object_name(&ci.table_name);
        let Some(mut entry) = self.catalog.get(&table) else {
            return Err(SqlError::UndefinedTable {
                name: table,
                position: None,
            }
            .into());
        };
        if entry.kind == RelationKind::View {
            return Err(AdapterError::WrongObjectType {
                name: table,
                expected: "table or materialized view",
            });
        }
        let name = match &ci.name {
            Some(n) => object_name(n),
            None => self.index_name(&entry, ci),
        };
        if self.catalog.name_taken(&name) {
            if ci.if_not_exists {
                return Ok(command("CREATE INDEX"));
            }
            return Err(SqlError::DuplicateRelation(name).into());
        }
        let columns = index_columns(&entry, ci)?;
        let method = method(ci)?;
        if ci.unique && entry.kind != RelationKind::Table {
            return Err(unsupported("a unique index on a materialized view"));
        }
        if ci.unique && entry.source.is_some() {
            return Err(unsupported("a unique index on a table fed by a source"));
        }
        // Held until the index is in place, so that no write comes between
        // the check of the rows and the index that checks later writes.
        let mut writes = self.writes.lock().await;
        let keys = if ci.unique {
            let keyed: Vec<usize> = columns.iter().map(|c| c.column).collect();
            let rows = self.current_rows(&entry).await?;
            Some(KeyIndexes::unique_keys(&entry, &name, &keyed, &rows)?)
        } else {
            None
        };
        let index = Index {
            id: self.catalog.allocate_id(),
            name,
            columns,
            unique: ci.unique,
            method,
            create_sql: sql.trim().to_string(),
        };
        self.persist_catalog(vec![weir_persist::CatalogOp::Create(weir_persist::CatalogItem {
            id: index.id,
            sql: index.create_sql.clone(),
            shard: false,
            detail: None,
        })])
        .await?;
        if let Some(keys) = keys {
            writes.add_unique(entry.id, keys);
        }
        entry.indexes.push(index);
        self.catalog.insert(entry);
        Ok(command("CREATE INDEX"))
    }

    /// The rows of table `entry` once every write queued before is in
    /// (none while the durable catalog is replayed: rows come after it).
    async fn current_rows(&self, entry: &Entry) -> Result<arrow::array::RecordBatch> {
        if self.restoring() {
            return Ok(arrow::array::RecordBatch::new_empty(entry.schema.clone()));
        }
        self.barrier().await?;
        let target = PeekTarget {
            id: entry.id,
            schema: entry.schema.clone(),
            keys: None,
            columns: None,
        };
        let mut batches = self.controller().peek(&[target]).await?;
        batches
            .pop()
            .ok_or_else(|| AdapterError::Internal(format!("no rows came back for {}", entry.name)))
    }

    /// PostgreSQL's name for an unnamed index: `t_a_b_idx`, numbered
    /// from 1 when that is taken.
    fn index_name(&self, entry: &Entry, ci: &ast::CreateIndex) -> String {
        let columns: Vec<String> = ci
            .columns
            .iter()
            .map(|c| match &c.column.expr {
                ast::Expr::Identifier(i) => ident(i),
                _ => "expr".to_string(),
            })
            .collect();
        let base = format!("{}_{}_idx", entry.name, columns.join("_"));
        std::iter::once(base.clone())
            .chain((1..).map(|n| format!("{base}{n}")))
            .find(|n| !self.catalog.name_taken(n))
            .expect("some number is free")
    }

    pub(crate) async fn drop_indexes(
        &self,
        if_exists: bool,
        names: &[ast::ObjectName],
    ) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        for n in names {
            let name = object_name(n);
            let Some(mut entry) = self.catalog.index_owner(&name) else {
                if self.catalog.get(&name).is_some() {
                    return Err(AdapterError::WrongObjectType {
                        name,
                        expected: "index",
                    });
                }
                if let Some(table) = self.constraint_owner(&name) {
                    return Err(AdapterError::IndexRequired { index: name, table });
                }
                if if_exists {
                    continue;
                }
                return Err(AdapterError::UndefinedObject { kind: "index", name });
            };
            let mut writes = self.writes.lock().await;
            let constraint = entry.constraints().iter().position(|(c, _)| *c == name);
            let position = entry
                .indexes
                .iter()
                .position(|i| i.name == name)
                .expect("index_owner found it");
            let index = entry.indexes.remove(position);
            self.persist_catalog(vec![weir_persist::CatalogOp::Drop(index.id)])
                .await?;
            if let Some(c) = constraint.filter(|_| index.unique) {
                writes.remove_unique(entry.id, c);
            }
            self.catalog.insert(entry);
        }
        Ok(command("DROP INDEX"))
    }

    /// The table whose primary key or `UNIQUE` constraint is named `name`
    /// (PostgreSQL backs each with an index of that name).
    fn constraint_owner(&self, name: &str) -> Option<String> {
        self.catalog
            .entries()
            .into_iter()
            .find(|e| e.constraint_indexes().iter().any(|(_, i)| i.name == name))
            .map(|e| e.name)
    }
}

/// The access method `USING` names: `btree` (the default) or `hash`.
fn method(ci: &ast::CreateIndex) -> Result<&'static str> {
    let method = match &ci.using {
        None | Some(ast::IndexType::BTree) => "btree",
        Some(ast::IndexType::Hash) => "hash",
        Some(other) => {
            return Err(unsupported(format!(
                "index access method \"{}\"",
                other.to_string().to_lowercase()
            )));
        }
    };
    if method == "hash" && ci.unique {
        return Err(unsupported("access method \"hash\" with unique indexes"));
    }
    if method == "hash" && ci.columns.len() > 1 {
        return Err(unsupported("access method \"hash\" with multicolumn indexes"));
    }
    Ok(method)
}

/// The columns `ci` indexes, refusing what Weir's indexes do not have.
fn index_columns(entry: &Entry, ci: &ast::CreateIndex) -> Result<Vec<IndexColumn>> {
    if ci.predicate.is_some() {
        return Err(unsupported("partial indexes (CREATE INDEX ... WHERE)"));
    }
    if !ci.include.is_empty() {
        return Err(unsupported("INCLUDE columns of an index"));
    }
    if ci.nulls_distinct == Some(false) {
        return Err(unsupported("NULLS NOT DISTINCT"));
    }
    if !ci.with.is_empty() || !ci.index_options.is_empty() || !ci.alter_options.is_empty() {
        return Err(unsupported("index storage parameters and options"));
    }
    ci.columns
        .iter()
        .map(|c| {
            if c.operator_class.is_some() {
                return Err(unsupported("operator classes in an index"));
            }
            let ast::Expr::Identifier(id) = &c.column.expr else {
                return Err(unsupported(format!(
                    "an index on the expression {}",
                    c.column.expr
                )));
            };
            let name = ident(id);
            let column = entry
                .columns
                .iter()
                .position(|col| col.name == name)
                .ok_or_else(|| AdapterError::UndefinedColumn {
                    table: entry.name.clone(),
                    column: name,
                })?;
            let descending = c.column.options.asc == Some(false);
            Ok(IndexColumn {
                column,
                descending,
                nulls_first: c.column.options.nulls_first.unwrap_or(descending),
            })
        })
        .collect()
}
