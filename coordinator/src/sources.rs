//! Secrets, connections and sources: their DDL.
//!
//! A secret's value is kept in the durable catalog and used to reach
//! upstream systems; it is never shown back (`SHOW SECRETS` lists names) and
//! never put in a message. A connection is validated against the upstream
//! when it is created (reachable, authenticates, `wal_level = logical`,
//! may replicate), not when the catalog is replayed at startup.

use std::sync::{Arc, Mutex};

use weir_connectors::postgres::{PgConfig, PgError, SslMode};
use weir_persist::{CatalogItem, CatalogOp};
use weir_sql::GlobalId;
use weir_sql::source_sql::{ObjectKind, OptionValue, SourceStatement};

use crate::catalog::Object;
use crate::error::AdapterError;
use crate::ingest::{Feed, Source, SourceKind, Status};
use crate::sequencer::{Coordinator, ExecuteResult, command};

type Result<T> = std::result::Result<T, AdapterError>;

impl Coordinator {
    pub(crate) async fn source_statement(
        &self,
        statement: &SourceStatement,
        sql: &str,
    ) -> Result<ExecuteResult> {
        let _ddl = self.ddl.lock().await;
        match statement {
            SourceStatement::CreateSecret {
                name,
                value,
                if_not_exists,
            } => {
                if self.name_taken(name, *if_not_exists)? {
                    return Ok(command("CREATE SECRET"));
                }
                let id = self.create_object(sql).await?;
                self.catalog.insert_object(Object {
                    id,
                    name: name.clone(),
                    kind: ObjectKind::Secret,
                    secret: Some(value.clone()),
                    options: Vec::new(),
                });
                Ok(command("CREATE SECRET"))
            }
            SourceStatement::CreateConnection {
                name,
                options,
                if_not_exists,
            } => {
                if self.name_taken(name, *if_not_exists)? {
                    return Ok(command("CREATE CONNECTION"));
                }
                let config = self.pg_config(options)?;
                // Replaying the catalog at startup must not depend on the
                // upstream being up.
                if !self.restoring() {
                    weir_connectors::postgres::validate(&config).await?;
                }
                let id = self.create_object(sql).await?;
                self.catalog.insert_object(Object {
                    id,
                    name: name.clone(),
                    kind: ObjectKind::Connection,
                    secret: None,
                    options: options.clone(),
                });
                Ok(command("CREATE CONNECTION"))
            }
            SourceStatement::CreateSource {
                name,
                connection,
                publication,
                tables,
                if_not_exists,
            } => {
                if self.name_taken(name, *if_not_exists)? {
                    return Ok(command("CREATE SOURCE"));
                }
                self.create_source(name, connection, publication, tables.as_deref(), sql)
                    .await?;
                Ok(command("CREATE SOURCE"))
            }
            SourceStatement::CreateGeneratorSource {
                name,
                generator,
                options,
                tables,
                if_not_exists,
            } => {
                if self.name_taken(name, *if_not_exists)? {
                    return Ok(command("CREATE SOURCE"));
                }
                self.create_generator_source(name, generator, options, tables.as_deref(), sql)
                    .await?;
                Ok(command("CREATE SOURCE"))
            }
            SourceStatement::CreateFileSource {
                name,
                url,
                columns,
                options,
                if_not_exists,
            } => {
                if self.name_taken(name, *if_not_exists)? {
                    return Ok(command("CREATE SOURCE"));
                }
                self.create_file_source(name, url, columns.as_deref(), options, sql)
                    .await?;
                Ok(command("CREATE SOURCE"))
            }
            SourceStatement::Drop {
                kind: ObjectKind::Source,
                names,
                if_exists,
                cascade,
            } => {
                for name in names {
                    if !self.catalog.sources().contains_key(name) {
                        if *if_exists {
                            continue;
                        }
                        return Err(AdapterError::UndefinedObject {
                            kind: "source",
                            name: name.clone(),
                        });
                    }
                    self.drop_source(name, *cascade).await?;
                }
                Ok(command("DROP SOURCE"))
            }
            SourceStatement::Drop {
                kind,
                names,
                if_exists,
                cascade,
            } => {
                let tag = format!("DROP {}", kind.name().to_ascii_uppercase());
                for name in names {
                    let Some(object) = self.catalog.object(name).filter(|o| o.kind == *kind) else {
                        if *if_exists {
                            continue;
                        }
                        return Err(AdapterError::UndefinedObject {
                            kind: kind.name(),
                            name: name.clone(),
                        });
                    };
                    let dependents = self.object_dependents(&object);
                    if !dependents.is_empty() && !cascade {
                        return Err(AdapterError::DependentObjects {
                            kind: kind.name(),
                            name: name.clone(),
                            dependents: dependents
                                .iter()
                                .map(|d| format!("{} {}", d.kind.name(), d.name))
                                .collect(),
                        });
                    }
                    let doomed: Vec<Object> = dependents.into_iter().chain(std::iter::once(object)).collect();
                    self.persist_catalog(doomed.iter().map(|o| CatalogOp::Drop(o.id)).collect())
                        .await?;
                    for o in doomed {
                        self.catalog.remove_object(&o.name);
                    }
                }
                Ok(command(&tag))
            }
        }
    }

    /// `CREATE SOURCE`: check the upstream (connection, publication, every
    /// table's replica identity), create one table per upstream table, make
    /// it all durable in one step, and start ingesting.
    async fn create_source(
        &self,
        name: &str,
        connection: &str,
        publication: &str,
        wanted: Option<&[weir_sql::source_sql::TableRef]>,
        sql: &str,
    ) -> Result<()> {
        let conn = self
            .catalog
            .object(connection)
            .filter(|o| o.kind == ObjectKind::Connection)
            .ok_or_else(|| AdapterError::UndefinedObject {
                kind: "connection",
                name: connection.to_string(),
            })?;
        let config = self.pg_config(&conn.options)?;
        let client = weir_connectors::postgres::connect(&config).await?;
        let published = weir_connectors::postgres::describe(&client, publication).await?;
        let chosen: Vec<(weir_connectors::postgres::UpstreamTable, String)> = match wanted {
            None => published.into_iter().map(|t| (t.clone(), t.name)).collect(),
            Some(refs) => refs
                .iter()
                .map(|r| {
                    let schema = r.schema.clone().unwrap_or_else(|| "public".into());
                    let t = published
                        .iter()
                        .find(|t| t.schema == schema && t.name == r.name)
                        .ok_or_else(|| PgError::NotPublished(format!("{schema}.{}", r.name)))?;
                    Ok((t.clone(), r.alias.clone().unwrap_or_else(|| r.name.clone())))
                })
                .collect::<Result<_>>()?,
        };
        let id = self.catalog.allocate_id();
        let entries = self.source_tables(
            name,
            chosen
                .iter()
                .map(|(upstream, weir_name)| (weir_name.clone(), table_sql(weir_name, upstream)))
                .collect(),
        )?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let slot = format!("weir_{id}_{nanos:08x}");
        let feeds: Vec<Feed> = chosen
            .iter()
            .zip(&entries)
            .map(|((upstream, _), e)| Feed {
                upstream: upstream.clone(),
                table: e.id,
                name: e.name.clone(),
                schema: e.schema.clone(),
                retired: Vec::new(),
            })
            .collect();
        let detail = source_detail(connection, publication, &slot, &feeds);
        self.install_source(id, sql, detail, entries).await?;
        self.register_source(Source {
            id,
            name: name.to_string(),
            kind: SourceKind::Postgres {
                sql: sql.trim().to_string(),
                connection: connection.to_string(),
                publication: publication.to_string(),
                slot,
                feeds,
            },
            status: Default::default(),
            task: None,
        });
        self.start_source(name, None, std::collections::HashMap::new())?;
        Ok(())
    }

    /// `CREATE SOURCE ... FROM LOAD GENERATOR`: its tables (those `wanted`,
    /// or all), made durable with the generator's spec in one step, then
    /// generating.
    async fn create_generator_source(
        &self,
        name: &str,
        generator: &str,
        options: &[(String, Option<String>)],
        wanted: Option<&[weir_sql::source_sql::TableRef]>,
        sql: &str,
    ) -> Result<()> {
        use weir_connectors::generator::{Kind, Spec};
        let kind = Kind::from_name(generator).ok_or_else(|| {
            AdapterError::InvalidParameter(format!(
                "there is no load generator {generator}; there are COUNTER and NEXMARK"
            ))
        })?;
        let invalid =
            |e: weir_connectors::generator::SpecError| AdapterError::InvalidParameter(e.to_string());
        let mut spec = Spec::new(kind, options, crate::controller::now_ms()).map_err(invalid)?;
        if let Some(wanted) = wanted {
            if let Some(qualified) = wanted.iter().find(|t| t.schema.is_some()) {
                return Err(AdapterError::InvalidParameter(format!(
                    "a load generator's tables have no schema: write {}, not {}.{}",
                    qualified.name,
                    qualified.schema.as_deref().unwrap_or_default(),
                    qualified.name
                )));
            }
            let names: Vec<&str> = wanted.iter().map(|t| t.name.as_str()).collect();
            spec.choose(&names).map_err(invalid)?;
        }
        // The Weir name of each table fed: its alias in FOR TABLES, or the
        // generator's name for it (the source's own for COUNTER's one).
        let alias = |upstream: &str| {
            wanted
                .into_iter()
                .flatten()
                .find(|t| t.name.eq_ignore_ascii_case(upstream))
                .and_then(|t| t.alias.clone())
        };
        let id = self.catalog.allocate_id();
        let entries = self.source_tables(
            name,
            spec.tables
                .iter()
                .map(|&i| {
                    let (table, columns) = kind.tables()[i];
                    let table = match table {
                        Some(t) => alias(t).unwrap_or_else(|| t.to_string()),
                        None => name.to_string(),
                    };
                    let create = format!("CREATE TABLE {} ({columns})", quoted(&table));
                    (table, create)
                })
                .collect(),
        )?;
        // A generator never takes a row back.
        let mut entries = entries;
        for e in &mut entries {
            e.append_only = true;
        }
        let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        let tables = entries
            .iter()
            .map(|e| (e.id, e.name.clone(), e.schema.clone()))
            .collect();
        self.install_source(id, sql, crate::generate::detail(&spec, &names), entries)
            .await?;
        self.register_source(Source {
            id,
            name: name.to_string(),
            kind: SourceKind::Generator { spec, tables },
            status: Arc::new(Mutex::new(Status {
                state: "starting".into(),
                ..Default::default()
            })),
            task: None,
        });
        self.start_source(name, None, std::collections::HashMap::new())
    }

    /// `CREATE SOURCE ... FROM FILES`: the table (its columns declared, or
    /// taken from the first file), its progress table, durable with the
    /// source in one step; then reading.
    async fn create_file_source(
        &self,
        name: &str,
        url: &str,
        columns: Option<&str>,
        options: &[(String, Option<String>)],
        sql: &str,
    ) -> Result<()> {
        use weir_connectors::files::{FileError, Files, Format};
        let invalid = |m: String| AdapterError::InvalidParameter(m);
        let mut format = None;
        let (mut header, mut delimiter, mut watch) = (false, b',', false);
        for (key, value) in options {
            match (key.as_str(), value.as_deref()) {
                ("FORMAT", Some(f)) => format = Some(f.to_ascii_uppercase()),
                ("HEADER", None) => header = true,
                ("DELIMITER", Some(d)) if d.len() == 1 => delimiter = d.as_bytes()[0],
                ("DELIMITER", _) => return Err(invalid("DELIMITER must be one character, as 'c'".into())),
                ("WATCH", None) => watch = true,
                _ => {
                    return Err(invalid(format!(
                        "unknown file source option {key}; there are FORMAT, HEADER, DELIMITER and WATCH"
                    )));
                }
            }
        }
        let format = format
            .or_else(|| Format::from_extension(url).map(String::from))
            .ok_or_else(|| invalid(format!("name the format of '{url}': FORMAT PARQUET | CSV | JSON")))?;
        let format = Format::from_name(&format, header, delimiter).ok_or_else(|| {
            invalid(format!(
                "unknown file format {format}; there are PARQUET, CSV and JSON"
            ))
        })?;
        if (header || delimiter != b',') && !matches!(format, Format::Csv { .. }) {
            return Err(invalid("HEADER and DELIMITER apply to FORMAT CSV only".into()));
        }
        let file_error = |e: FileError| match e {
            FileError::InvalidUrl { .. } => invalid(e.to_string()),
            FileError::Store(_) => AdapterError::FileStore(e.to_string()),
            FileError::Malformed { .. } => AdapterError::BadCopyFile(e.to_string()),
        };
        let files = Files::open(url).map_err(file_error)?;
        // Listing now also checks the location is reachable.
        let listed = files.list().await.map_err(file_error)?;
        let columns = match columns {
            Some(c) => c.to_string(),
            None => {
                let first = listed.first().ok_or_else(|| {
                    invalid(format!(
                        "no files match '{url}' to take the columns from; declare them: CREATE SOURCE {name} (column type, ...) FROM FILES ..."
                    ))
                })?;
                let schema = files.infer_schema(first, &format).await.map_err(file_error)?;
                schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let ty = weir_sql::types::storable_type_name(f.data_type()).ok_or_else(|| {
                            AdapterError::Unsupported(format!(
                                "column \"{}\" of type {} in {}",
                                f.name(),
                                f.data_type(),
                                first.url
                            ))
                        })?;
                        Ok(format!("{} {ty}", quoted(f.name())))
                    })
                    .collect::<Result<Vec<_>>>()?
                    .join(", ")
            }
        };
        let progress = format!("{name}_progress");
        let id = self.catalog.allocate_id();
        let entries = self.source_tables(
            name,
            vec![
                (
                    name.to_string(),
                    format!("CREATE TABLE {} ({columns})", quoted(name)),
                ),
                (
                    progress.clone(),
                    format!(
                        "CREATE TABLE {} ({})",
                        quoted(&progress),
                        crate::files::PROGRESS_COLUMNS
                    ),
                ),
            ],
        )?;
        let spec = crate::files::FileSpec {
            url: url.to_string(),
            format,
            watch,
        };
        // Files only add rows; their progress is updated in place.
        let mut entries = entries;
        entries[0].append_only = true;
        let [table, progress] = [&entries[0], &entries[1]].map(|e| (e.id, e.name.clone(), e.schema.clone()));
        self.install_source(
            id,
            sql,
            crate::files::detail(&spec, &table.1, &progress.1),
            entries,
        )
        .await?;
        self.register_source(Source {
            id,
            name: name.to_string(),
            kind: SourceKind::Files {
                spec,
                table,
                progress,
            },
            status: Arc::new(Mutex::new(Status {
                state: "starting".into(),
                ..Default::default()
            })),
            task: None,
        });
        self.start_source(name, None, std::collections::HashMap::new())
    }

    /// The tables a new source `source` feeds, from their names and
    /// `CREATE TABLE` statements; 42P07 if a name is taken.
    fn source_tables(
        &self,
        source: &str,
        tables: Vec<(String, String)>,
    ) -> Result<Vec<crate::catalog::Entry>> {
        for (name, _) in &tables {
            if self.catalog.name_taken(name) || self.catalog.object(name).is_some() {
                return Err(weir_sql::SqlError::DuplicateRelation(name.clone()).into());
            }
        }
        tables
            .iter()
            .map(|(_, create)| self.source_table_entry(source, create))
            .collect()
    }

    /// The catalog entry of a table source `source` feeds, from its
    /// `CREATE TABLE` statement (with a fresh id).
    fn source_table_entry(&self, source: &str, create: &str) -> Result<crate::catalog::Entry> {
        let statements = weir_sql::statement::parse(create)?;
        let Some(weir_sql::statement::Statement::Sql(ast)) = statements.first().map(|s| &s.statement) else {
            return Err(AdapterError::Internal(format!("cannot plan {create}")));
        };
        let datafusion::sql::sqlparser::ast::Statement::CreateTable(ct) = ast.as_ref() else {
            return Err(AdapterError::Internal(format!("cannot plan {create}")));
        };
        self.table_entry(ct, create, Some(source.to_string()))
    }

    /// Give the table of source `source`'s feed `feed` its next version,
    /// with the columns `upstream` adds, holding `rows`: the version and
    /// its rows, the source's new description and the old version's
    /// retirement become durable in one step. Views created before keep
    /// reading the old version, which the source goes on feeding; the
    /// name (and so every later statement) means the new one.
    pub(crate) async fn add_table_version(
        &self,
        source: &str,
        feed: usize,
        upstream: weir_connectors::postgres::UpstreamTable,
        rows: weir_connectors::copy::TextColumns,
    ) -> Result<Feed> {
        let _ddl = self.ddl.lock().await;
        let durable = self
            .durable()
            .ok_or_else(|| AdapterError::Internal("no committer while restoring".into()))?;
        let gone = || AdapterError::Internal(format!("source {source} is gone"));
        let (source_id, sql, connection, publication, slot, mut feeds) =
            match self.catalog.sources().get(source) {
                Some(Source {
                    id,
                    kind:
                        SourceKind::Postgres {
                            sql,
                            connection,
                            publication,
                            slot,
                            feeds,
                        },
                    ..
                }) => (
                    *id,
                    sql.clone(),
                    connection.clone(),
                    publication.clone(),
                    slot.clone(),
                    feeds.clone(),
                ),
                _ => return Err(gone()),
            };
        let old = feeds.get(feed).cloned().ok_or_else(gone)?;
        let mut entry = self.source_table_entry(source, &table_sql(&old.name, &upstream))?;
        let batch = rows
            .finish(&entry.schema)
            .map_err(|e| AdapterError::Internal(format!("the rows of {}: {e}", old.name)))?;
        let mut retired = old.retired.clone();
        retired.push((old.table, old.schema.clone()));
        feeds[feed] = Feed {
            upstream,
            table: entry.id,
            name: old.name.clone(),
            schema: entry.schema.clone(),
            retired,
        };
        let ops = vec![
            crate::sequencer::table_version_item(&entry, old.table),
            CatalogOp::Create(CatalogItem {
                id: source_id,
                sql: sql.clone(),
                shard: false,
                detail: Some(source_detail(&connection, &publication, &slot, &feeds)),
            }),
        ];
        // The workers get the table before its rows; statements see the
        // new version only once it is durable.
        self.create_table_input(&entry).await;
        let update = weir_protocol::TableUpdate {
            table: entry.id,
            batch,
            diff: 1,
        };
        durable
            .write_with_catalog(vec![update], ops, self.catalog.next_id())
            .wait()
            .await?;
        entry.indexes = self.catalog.retire(&old.name);
        self.catalog.insert(entry);
        if let Some(s) = self.catalog.sources().get_mut(source)
            && let SourceKind::Postgres { feeds: live, .. } = &mut s.kind
        {
            *live = feeds.clone();
        }
        Ok(feeds.swap_remove(feed))
    }

    /// Make source `id` (its statement, `detail` and its tables) durable
    /// in one step, and install its tables.
    async fn install_source(
        &self,
        id: u64,
        sql: &str,
        detail: String,
        entries: Vec<crate::catalog::Entry>,
    ) -> Result<()> {
        let mut ops = vec![CatalogOp::Create(CatalogItem {
            id,
            sql: sql.trim().to_string(),
            shard: false,
            detail: Some(detail),
        })];
        ops.extend(entries.iter().map(crate::sequencer::table_item));
        self.persist_catalog(ops).await?;
        for e in entries {
            self.install_table(e).await;
        }
        Ok(())
    }

    pub(crate) fn register_source(&self, source: Source) {
        self.catalog.sources().insert(source.name.clone(), source);
    }

    /// Start (or restart) ingesting source `name` after `position`.
    pub(crate) fn start_source(
        &self,
        name: &str,
        position: Option<u64>,
        current: std::collections::HashMap<u64, Vec<String>>,
    ) -> Result<()> {
        let Some(durable) = self.durable() else {
            return Ok(());
        };
        let mut sources = self.catalog.sources();
        let Some(source) = sources.get_mut(name) else {
            return Ok(());
        };
        source.task = Some(match &source.kind {
            SourceKind::Postgres {
                connection,
                publication,
                slot,
                feeds,
                ..
            } => {
                let conn = self
                    .catalog
                    .object(connection)
                    .ok_or_else(|| AdapterError::UndefinedObject {
                        kind: "connection",
                        name: connection.clone(),
                    })?;
                let config = self.pg_config(&conn.options)?;
                let task = crate::ingest::Ingest {
                    id: source.id,
                    name: source.name.clone(),
                    config,
                    slot: slot.clone(),
                    publication: publication.clone(),
                    durable,
                    status: source.status.clone(),
                    widener: self.widener.clone(),
                };
                crate::ingest::spawn(task, feeds.clone(), position, current)
            }
            SourceKind::Generator { spec, tables } => crate::generate::spawn(
                source.id,
                source.name.clone(),
                spec.clone(),
                tables
                    .iter()
                    .map(|(id, _, schema)| (*id, schema.clone()))
                    .collect(),
                position,
                durable,
                source.status.clone(),
            ),
            SourceKind::Files {
                spec,
                table,
                progress,
            } => crate::files::spawn(
                source.id,
                source.name.clone(),
                spec.clone(),
                (table.0, table.2.clone(), self.column_rules(&table.1)),
                (progress.0, progress.2.clone()),
                crate::files::progress_from_lines(current.get(&progress.0).map_or(&[][..], |l| l.as_slice())),
                position == Some(1),
                durable,
                source.status.clone(),
            ),
        });
        Ok(())
    }

    /// What table `name`'s columns demand beyond their types.
    fn column_rules(&self, name: &str) -> Vec<weir_connectors::files::Rule> {
        self.catalog
            .get(name)
            .map(|e| {
                e.columns
                    .iter()
                    .map(|c| weir_connectors::files::Rule {
                        not_null: !c.nullable,
                        max_chars: c.max_length,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `DROP SOURCE`: stop it, drop its tables (and, with CASCADE, the
    /// views over them) and its replication slot upstream.
    async fn drop_source(&self, name: &str, cascade: bool) -> Result<()> {
        let (id, tables, retired, upstream_slot) = {
            let sources = self.catalog.sources();
            let s = &sources[name];
            let retired: Vec<GlobalId> = match &s.kind {
                SourceKind::Postgres { feeds, .. } => feeds
                    .iter()
                    .flat_map(|f| f.retired.iter().map(|(id, _)| *id))
                    .collect(),
                SourceKind::Generator { .. } | SourceKind::Files { .. } => Vec::new(),
            };
            let slot = match &s.kind {
                SourceKind::Postgres { connection, slot, .. } => Some((connection.clone(), slot.clone())),
                SourceKind::Generator { .. } | SourceKind::Files { .. } => None,
            };
            (
                s.id,
                s.tables()
                    .into_iter()
                    .map(|(_, n)| n.to_string())
                    .collect::<Vec<_>>(),
                retired,
                slot,
            )
        };
        let mut doomed = Vec::new();
        for t in &tables {
            for d in self.catalog.dependents_closure(t) {
                if !tables.contains(&d.name)
                    && !doomed.iter().any(|x: &crate::catalog::Entry| x.name == d.name)
                {
                    doomed.push(d);
                }
            }
        }
        if !doomed.is_empty() && !cascade {
            return Err(AdapterError::DependentObjects {
                kind: "source",
                name: name.to_string(),
                dependents: doomed
                    .iter()
                    .map(|d| format!("{} {}", d.kind_name(), d.name))
                    .collect(),
            });
        }
        doomed.extend(tables.iter().filter_map(|t| self.catalog.get(t)));
        doomed.extend(retired.into_iter().filter_map(|id| self.catalog.retired(id)));
        let mut ops: Vec<CatalogOp> = doomed
            .iter()
            .flat_map(|e| e.item_ids())
            .map(CatalogOp::Drop)
            .collect();
        ops.push(CatalogOp::Drop(id));
        self.persist_catalog(ops).await?;
        if let Some(mut s) = self.catalog.sources().remove(name)
            && let Some(task) = s.task.take()
        {
            task.abort();
        }
        self.remove_entries(doomed).await;
        // The slot holds WAL upstream: remove it. The source is gone from
        // Weir either way; an unreachable upstream keeps its slot.
        if let Some((connection, slot)) = upstream_slot
            && let Some(conn) = self.catalog.object(&connection)
        {
            let config = self.pg_config(&conn.options)?;
            if let Err(e) = weir_connectors::postgres::drop_slot(&config, &slot).await {
                tracing::warn!(source = name, slot, error = %e, "could not drop the replication slot upstream");
            }
        }
        Ok(())
    }

    /// Whether `name` is already used (`Ok(true)`: skip, for IF NOT
    /// EXISTS), or 42710 when it is.
    fn name_taken(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        let taken = self.catalog.object(name).is_some()
            || self.catalog.get(name).is_some()
            || self.catalog.sources().contains_key(name);
        match (taken, if_not_exists) {
            (false, _) => Ok(false),
            (true, true) => Ok(true),
            (true, false) => Err(AdapterError::DuplicateObject(name.to_string())),
        }
    }

    async fn create_object(&self, sql: &str) -> Result<u64> {
        let id = self.catalog.allocate_id();
        self.persist_catalog(vec![CatalogOp::Create(CatalogItem {
            id,
            sql: sql.trim().to_string(),
            shard: false,
            detail: None,
        })])
        .await?;
        Ok(id)
    }

    /// Connections that use `object` (a secret).
    fn object_dependents(&self, object: &Object) -> Vec<Object> {
        if object.kind != ObjectKind::Secret {
            return Vec::new();
        }
        self.catalog
            .objects()
            .into_iter()
            .filter(|o| {
                o.options
                    .iter()
                    .any(|(_, v)| matches!(v, OptionValue::Secret(s) if *s == object.name))
            })
            .collect()
    }

    /// A connection's options as an upstream configuration, with secrets
    /// resolved.
    pub(crate) fn pg_config(&self, options: &[(String, OptionValue)]) -> Result<PgConfig> {
        let mut host = None;
        let mut port = 5432u16;
        let mut user = None;
        let mut password = None;
        let mut database = None;
        let mut ssl_mode = SslMode::Disable;
        let mut ca = None;
        let invalid = |m: String| AdapterError::InvalidParameter(m);
        for (key, value) in options {
            let text = match value {
                OptionValue::Text(s) | OptionValue::Number(s) => s.clone(),
                OptionValue::Secret(name) => self
                    .catalog
                    .object(name)
                    .filter(|o| o.kind == ObjectKind::Secret)
                    .and_then(|o| o.secret)
                    .ok_or_else(|| AdapterError::UndefinedObject {
                        kind: "secret",
                        name: name.clone(),
                    })?,
            };
            match key.as_str() {
                "HOST" => host = Some(text),
                "PORT" => {
                    port = text
                        .parse()
                        .map_err(|_| invalid(format!("PORT must be a port number, not {text}")))?
                }
                "USER" => user = Some(text),
                "PASSWORD" => {
                    if !matches!(value, OptionValue::Secret(_)) {
                        return Err(invalid(
                            "PASSWORD must name a secret: PASSWORD SECRET name".into(),
                        ));
                    }
                    password = Some(text)
                }
                "DATABASE" => database = Some(text),
                "SSL MODE" => {
                    ssl_mode = SslMode::parse(&text).ok_or_else(|| {
                        invalid(format!(
                            "SSL MODE must be 'disable', 'require' or 'verify-full', not '{text}'"
                        ))
                    })?
                }
                "SSL CERTIFICATE AUTHORITY" => {
                    if !text.contains("-----BEGIN CERTIFICATE-----") {
                        return Err(invalid(
                            "SSL CERTIFICATE AUTHORITY must be PEM text (-----BEGIN CERTIFICATE----- ...) or a secret holding it".into(),
                        ));
                    }
                    ca = Some(text)
                }
                other => return Err(invalid(format!("unknown connection option {other}"))),
            }
        }
        if ca.is_some() && ssl_mode != SslMode::VerifyFull {
            return Err(invalid(
                "SSL CERTIFICATE AUTHORITY is used only with SSL MODE 'verify-full'".into(),
            ));
        }
        let missing = |o: &str| invalid(format!("a POSTGRES connection needs {o}"));
        Ok(PgConfig {
            host: host.ok_or_else(|| missing("HOST"))?,
            port,
            user: user.ok_or_else(|| missing("USER"))?,
            password,
            database: database.unwrap_or_else(|| "postgres".into()),
            ssl_mode,
            ca,
        })
    }
}

impl From<PgError> for AdapterError {
    fn from(e: PgError) -> Self {
        AdapterError::Upstream(e)
    }
}

/// The `CREATE TABLE` that holds upstream table `t` in Weir: its columns in
/// Weir's types (text where Weir has no such type), NOT NULL as upstream,
/// and its replica identity as primary key.
fn table_sql(name: &str, t: &weir_connectors::postgres::UpstreamTable) -> String {
    let mut parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let ty = weir_type(&c.type_name);
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {ty}{null}", quoted(&c.name))
        })
        .collect();
    if !t.key.is_empty() {
        let key: Vec<String> = t.key.iter().map(|i| quoted(&t.columns[*i].name)).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!("CREATE TABLE {} ({})", quoted(name), parts.join(", "))
}

/// `s` as a quoted identifier (always quoted: upstream names may be
/// keywords).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Weir's name for upstream type `pg` (`format_type` output).
fn weir_type(pg: &str) -> String {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(pg)
        .and_then(|mut p| p.parse_data_type())
        .ok()
        .and_then(|t| weir_sql::types::column_type(&t).ok())
        .map(|t| t.sql_name)
        .unwrap_or_else(|| "text".into())
}

/// What a source's catalog item records beyond its statement, so a
/// restart needs nothing from upstream.
fn source_detail(connection: &str, publication: &str, slot: &str, feeds: &[Feed]) -> String {
    let feeds: Vec<serde_json::Value> = feeds
        .iter()
        .map(|f| {
            serde_json::json!({
                "table": f.table,
                "name": f.name,
                "oid": f.upstream.oid,
                "schema": f.upstream.schema,
                "upstream": f.upstream.name,
                "key": f.upstream.key,
                "columns": f.upstream.columns.iter().map(|c| serde_json::json!({
                    "name": c.name, "type": c.type_name, "type_oid": c.type_oid, "not_null": c.not_null,
                    "missing": c.missing, "added_in": c.added_in,
                })).collect::<Vec<_>>(),
                "retired": f.retired.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "connection": connection,
        "publication": publication,
        "slot": slot,
        "feeds": feeds,
    })
    .to_string()
}

/// A source from its catalog item (at restart); its tables must already
/// be in `catalog`.
pub(crate) fn source_from_detail(
    id: u64,
    name: &str,
    sql: &str,
    detail: &str,
    catalog: &crate::catalog::Catalog,
) -> std::result::Result<Source, String> {
    let v: serde_json::Value = serde_json::from_str(detail).map_err(|e| e.to_string())?;
    if let Some(generator) = crate::generate::from_detail(id, name, &v, catalog) {
        return generator;
    }
    if let Some(files) = crate::files::from_detail(id, name, &v, catalog) {
        return files;
    }
    let text = |v: &serde_json::Value, k: &str| -> std::result::Result<String, String> {
        v[k].as_str().map(String::from).ok_or_else(|| format!("no {k}"))
    };
    let mut feeds = Vec::new();
    for f in v["feeds"].as_array().ok_or("no feeds")? {
        let (table, table_name, schema) = catalog.source_table(&text(f, "name")?)?;
        let columns = f["columns"]
            .as_array()
            .ok_or("no columns")?
            .iter()
            .map(|c| {
                Ok(weir_connectors::postgres::UpstreamColumn {
                    name: text(c, "name")?,
                    type_name: text(c, "type")?,
                    type_oid: c["type_oid"].as_u64().unwrap_or(0) as u32,
                    not_null: c["not_null"].as_bool().unwrap_or(false),
                    missing: c["missing"].as_str().map(String::from),
                    added_in: c["added_in"].as_u64().unwrap_or(0),
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        feeds.push(Feed {
            upstream: weir_connectors::postgres::UpstreamTable {
                oid: f["oid"].as_u64().ok_or("no oid")? as u32,
                schema: text(f, "schema")?,
                name: text(f, "upstream")?,
                columns,
                key: f["key"]
                    .as_array()
                    .ok_or("no key")?
                    .iter()
                    .filter_map(|k| k.as_u64().map(|k| k as usize))
                    .collect(),
            },
            table,
            name: table_name,
            schema,
            retired: f["retired"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let id = v.as_u64().ok_or("bad retired version")?;
                    let e = catalog
                        .retired(id)
                        .ok_or_else(|| format!("table version {id} is missing"))?;
                    Ok((e.id, e.schema))
                })
                .collect::<std::result::Result<_, String>>()?,
        });
    }
    Ok(Source {
        id,
        name: name.to_string(),
        kind: SourceKind::Postgres {
            sql: sql.to_string(),
            connection: text(&v, "connection")?,
            publication: text(&v, "publication")?,
            slot: text(&v, "slot")?,
            feeds,
        },
        status: Default::default(),
        task: None,
    })
}
