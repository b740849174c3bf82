//! Secrets, connections and sources: their DDL.
//!
//! A secret's value is kept in the durable catalog and used to reach
//! upstream systems; it is never shown back (`SHOW SECRETS` lists names) and
//! never put in a message. A connection is validated against the upstream
//! when it is created (reachable, authenticates, `wal_level = logical`,
//! may replicate), not when the catalog is replayed at startup.

use weir_connectors::postgres::{PgConfig, PgError, SslMode};
use weir_persist::{CatalogItem, CatalogOp};
use weir_sql::source_sql::{ObjectKind, OptionValue, SourceStatement};

use crate::catalog::Object;
use crate::error::AdapterError;
use crate::sequencer::{Coordinator, ExecuteResult};

type Result<T> = std::result::Result<T, AdapterError>;

fn command(tag: &str) -> ExecuteResult {
    ExecuteResult::Command { tag: tag.into() }
}

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
            SourceStatement::CreateSource { .. } => Err(AdapterError::Unsupported(
                "CREATE SOURCE FROM POSTGRES (ingesting a publication is not built yet)".into(),
            )),
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

    /// Whether `name` is already used (`Ok(true)`: skip, for IF NOT
    /// EXISTS), or 42710 when it is.
    fn name_taken(&self, name: &str, if_not_exists: bool) -> Result<bool> {
        let taken = self.catalog.object(name).is_some() || self.catalog.get(name).is_some();
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
                other => return Err(invalid(format!("unknown connection option {other}"))),
            }
        }
        let missing = |o: &str| invalid(format!("a POSTGRES connection needs {o}"));
        Ok(PgConfig {
            host: host.ok_or_else(|| missing("HOST"))?,
            port,
            user: user.ok_or_else(|| missing("USER"))?,
            password,
            database: database.unwrap_or_else(|| "postgres".into()),
            ssl_mode,
        })
    }
}

impl From<PgError> for AdapterError {
    fn from(e: PgError) -> Self {
        AdapterError::Upstream(e)
    }
}
