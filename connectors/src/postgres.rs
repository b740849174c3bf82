//! Talking to an upstream PostgreSQL: checking that a connection can feed a
//! source, and describing the tables a publication covers.
//!
//! This module owns the upstream side only: it connects, asks, and
//! reports what is wrong in terms a user can act on. It never touches
//! Weir's catalog.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// How to reach an upstream database (secrets already resolved).
#[derive(Clone)]
pub struct PgConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub ssl_mode: SslMode,
    /// PEM certificates to trust under `verify-full` (the public web's
    /// roots when absent).
    pub ca: Option<String>,
}

impl std::fmt::Debug for PgConfig {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Some(SslMode::Disable),
            "require" => Some(SslMode::Require),
            "verify-full" | "verify_full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }
}

/// What is wrong with an upstream, with the fix where there is one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {host}:{port}: {reason}")]
    Unreachable { host: String, port: u16, reason: String },
    #[error("PostgreSQL refused the login of user \"{user}\": {reason}")]
    Authentication { user: String, reason: String },
    #[error("PostgreSQL at {host}:{port} has wal_level = {level}, not logical")]
    WalLevel { host: String, port: u16, level: String },
    #[error("user \"{user}\" may not start replication")]
    NoReplication { user: String },
    #[error("publication \"{0}\" does not exist upstream")]
    MissingPublication(String),
    #[error("upstream table {0} is not in the publication")]
    NotPublished(String),
    #[error("upstream table {table} has no usable replica identity")]
    NoReplicaIdentity { table: String },
    #[error("TLS with PostgreSQL at {host}:{port} failed: {reason}")]
    Tls { host: String, port: u16, reason: String },
    #[error("upstream PostgreSQL: {0}")]
    Upstream(String),
}

impl PgError {
    /// The fix to suggest, as a hint.
    pub fn hint(&self) -> Option<String> {
        match self {
            PgError::Unreachable { .. } => Some("Check HOST and PORT, and that the server accepts TCP connections from Weir (listen_addresses, pg_hba.conf).".into()),
            PgError::Authentication { .. } => Some("Check USER and the PASSWORD secret.".into()),
            PgError::WalLevel { .. } => Some("Set wal_level = logical in postgresql.conf and restart the server.".into()),
            PgError::NoReplication { user } => Some(format!("Run ALTER ROLE {user} WITH REPLICATION upstream.")),
            PgError::MissingPublication(p) => Some(format!("Run CREATE PUBLICATION {p} FOR ALL TABLES (or FOR TABLE ...) upstream.")),
            PgError::NotPublished(t) => Some(format!("Run ALTER PUBLICATION ... ADD TABLE {t} upstream.")),
            PgError::NoReplicaIdentity { table } => Some(format!(
                "Give {table} a primary key, or run ALTER TABLE {table} REPLICA IDENTITY FULL upstream."
            )),
            PgError::Tls { .. } => Some(
                "Check SSL MODE (the server must have ssl = on), and under 'verify-full' that HOST is the name in the server's certificate and SSL CERTIFICATE AUTHORITY holds the certificate that signed it.".into(),
            ),
            PgError::Upstream(_) => None,
        }
    }
}

impl PgConfig {
    /// The TLS settings for this connection, shared by normal and
    /// replication sessions (the CA is handed over as a file).
    fn tls(&self) -> Result<pgwire_replication::TlsConfig, PgError> {
        use pgwire_replication::TlsConfig;
        Ok(match self.ssl_mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyFull => TlsConfig::verify_full(self.ca.as_deref().map(ca_file).transpose()?),
        })
    }

    fn tls_error(&self, reason: impl std::fmt::Display) -> PgError {
        PgError::Tls {
            host: self.host.clone(),
            port: self.port,
            reason: reason.to_string(),
        }
    }
}

/// `pem` in a file named after its content, in the temporary directory.
fn ca_file(pem: &str) -> Result<std::path::PathBuf, PgError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pem.hash(&mut h);
    let path = std::env::temp_dir().join(format!("weir-ca-{:016x}.pem", h.finish()));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem) {
        std::fs::write(&path, pem).map_err(|e| {
            PgError::Upstream(format!(
                "cannot write the CA certificate to {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(path)
}

/// Connect with a normal (non-replication) session, over TLS unless
/// `SSL MODE` is `disable`. TLS is negotiated here, by the same code the
/// replication session uses, and the session starts over that stream.
pub async fn connect(config: &PgConfig) -> Result<Client, PgError> {
    let tls = config.tls()?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .dbname(&config.database)
        .application_name("weir")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(p) = &config.password {
        pg.password(p);
    }
    let unreachable = |reason: String| PgError::Unreachable {
        host: config.host.clone(),
        port: config.port,
        reason,
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((config.host.as_str(), config.port)),
    )
    .await
    .map_err(|_| unreachable("timed out after 10 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream = pgwire_replication::tls::rustls::maybe_upgrade_to_tls(tcp, &tls, &config.host)
        .await
        .map_err(|e| config.tls_error(e))?;
    let (client, connection) = pg
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) if db.code().code().starts_with("28") => PgError::Authentication {
                user: config.user.clone(),
                reason: db.message().to_string(),
            },
            Some(db) => PgError::Upstream(db.message().to_string()),
            None => unreachable(
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
            ),
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn upstream(e: tokio_postgres::Error) -> PgError {
    PgError::Upstream(
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    )
}

/// Check that `config` can feed a source: it connects and authenticates,
/// the server has `wal_level = logical`, and the user may replicate.
pub async fn validate(config: &PgConfig) -> Result<(), PgError> {
    let client = connect(config).await?;
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(upstream)?
        .get(0);
    if level != "logical" {
        return Err(PgError::WalLevel {
            host: config.host.clone(),
            port: config.port,
            level,
        });
    }
    let may: bool = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(upstream)?
        .get(0);
    if !may {
        return Err(PgError::NoReplication {
            user: config.user.clone(),
        });
    }
    Ok(())
}

/// A column of an upstream table.
#[derive(Debug, Clone)]
pub struct UpstreamColumn {
    pub name: String,
    /// `format_type` of the column, e.g. `numeric(10,2)`.
    pub type_name: String,
    /// The type's OID, to notice a column retyped upstream.
    pub type_oid: u32,
    pub not_null: bool,
    /// For a column added after Weir first read the table: the value rows
    /// written before it existed have (`None`: NULL), and the end LSN of
    /// the transaction in whose changes it first appeared (0: there from
    /// the start).
    pub missing: Option<String>,
    pub added_in: u64,
}

/// An upstream table a publication covers.
#[derive(Debug, Clone)]
pub struct UpstreamTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<UpstreamColumn>,
    /// The replica identity's columns (empty with REPLICA IDENTITY FULL).
    pub key: Vec<usize>,
}

impl UpstreamTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The tables `publication` covers, with their columns and replica
/// identities. A table whose updates could not be applied (no replica
/// identity) is an error naming it.
pub async fn describe(client: &Client, publication: &str) -> Result<Vec<UpstreamTable>, PgError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(upstream)?;
    if exists.is_none() {
        return Err(PgError::MissingPublication(publication.to_string()));
    }
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text
             FROM pg_catalog.pg_publication_tables p
             JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = $1 ORDER BY 2, 3",
            &[&publication],
        )
        .await
        .map_err(upstream)?;
    let mut out = Vec::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let identity: String = row.get(3);
        let columns = table_columns(client, oid).await?;
        let key_query = match identity.as_str() {
            "d" => Some("indisprimary"),
            "i" => Some("indisreplident"),
            _ => None,
        };
        let key = match key_query {
            Some(flag) => {
                let attnums: Vec<i16> = client
                    .query_opt(
                        &format!(
                            "SELECT i.indkey::int2[] FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND i.{flag}"
                        ),
                        &[&oid],
                    )
                    .await
                    .map_err(upstream)?
                    .map(|r| r.get(0))
                    .unwrap_or_default();
                attnums
                    .iter()
                    .filter_map(|n| columns.iter().position(|(a, _)| a == n))
                    .collect::<Vec<_>>()
            }
            _ => Vec::new(),
        };
        let qualified = format!("{schema}.{name}");
        if identity == "n" || (key_query.is_some() && key.is_empty()) {
            return Err(PgError::NoReplicaIdentity { table: qualified });
        }
        out.push(UpstreamTable {
            oid,
            schema,
            name,
            columns: columns.into_iter().map(|(_, c)| c).collect(),
            key,
        });
    }
    Ok(out)
}

/// Describe columns `names` of upstream table `oid`, added in the
/// transaction ending at `added_in`, after Weir read the table. Rows that
/// were there before keep no trace of the new column in the replication
/// stream, so their value comes from the catalog: NULL
/// when the column has no default, the stored "missing value" when it was
/// added with a constant default. A default that is not stored that way
/// (a volatile one rewrote the table, or it was set after the column was
/// added) leaves the old rows' values unknowable from here: an error.
pub async fn added_columns(
    config: &PgConfig,
    oid: u32,
    names: &[String],
    added_in: u64,
) -> Result<Vec<UpstreamColumn>, PgError> {
    let client = connect(config).await?;
    let mut out = Vec::new();
    for name in names {
        let row = client
            .query_opt(
                "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atttypid,
                        a.atthasdef, a.atthasmissing, a.attmissingval::text,
                        (SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = a.attrelid)
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oid, name],
            )
            .await
            .map_err(upstream)?
            .ok_or_else(|| {
                PgError::Upstream(format!(
                    "column \"{name}\" of the table with OID {oid} is gone again; drop and re-create the source"
                ))
            })?;
        let type_name: String = row.get(0);
        let (has_default, has_missing): (bool, bool) = (row.get(3), row.get(4));
        let table: Option<String> = row.get(6);
        let missing = if has_missing {
            // The missing value is a one-element array of the column's type.
            let array: String = row.get(5);
            client
                .query_one(&format!("SELECT ($1::text::{type_name}[])[1]::text"), &[&array])
                .await
                .map_err(upstream)?
                .get(0)
        } else if has_default {
            return Err(PgError::Upstream(format!(
                "column \"{name}\" was added to {} with a default whose value for the existing rows is not in the \
                 replication stream (a volatile default, or one set after the column was added); drop and re-create the source",
                table.unwrap_or_else(|| format!("the table with OID {oid}"))
            )));
        } else {
            None
        };
        out.push(UpstreamColumn {
            name: name.clone(),
            type_name,
            not_null: row.get(1),
            type_oid: row.get(2),
            missing,
            added_in,
        });
    }
    Ok(out)
}

/// Table `oid`'s columns, with their attribute numbers, as `client`'s
/// snapshot sees them.
async fn table_columns(client: &Client, oid: u32) -> Result<Vec<(i16, UpstreamColumn)>, PgError> {
    Ok(client
        .query(
            "SELECT a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atttypid
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(upstream)?
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                UpstreamColumn {
                    name: r.get(1),
                    type_name: r.get(2),
                    not_null: r.get(3),
                    type_oid: r.get(4),
                    missing: None,
                    added_in: 0,
                },
            )
        })
        .collect())
}

/// A change read from the replication stream.
#[derive(Debug, Clone)]
pub enum Change {
    Relation(crate::pgoutput::Relation),
    Insert {
        relation: u32,
        new: Vec<crate::pgoutput::Value>,
    },
    Update {
        relation: u32,
        old: Option<Vec<crate::pgoutput::Value>>,
        new: Vec<crate::pgoutput::Value>,
    },
    Delete {
        relation: u32,
        old: Vec<crate::pgoutput::Value>,
    },
    Truncate(Vec<u32>),
}

/// One upstream transaction: its changes and the LSN to resume after it.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub end_lsn: u64,
    /// When it committed upstream, in microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    pub changes: Vec<Change>,
}

/// The tables at the slot's consistent point: each one's columns then (it
/// may have gained some since the source was created) and its rows in all
/// of them, as `COPY` text.
pub struct SnapshotData {
    pub lsn: u64,
    pub columns: Vec<Vec<UpstreamColumn>>,
    pub tables: Vec<bytes::Bytes>,
}

/// The replication stream of one source.
pub struct ReplicationStream {
    client: pgwire_replication::ReplicationClient,
    /// The transaction being read; kept here so that dropping a pending
    /// [`ReplicationStream::next`] loses nothing.
    changes: Vec<Change>,
    in_transaction: bool,
    /// The server's WAL position, as it last said.
    server_lsn: u64,
    /// The end of the last transaction handed to the caller.
    handed: u64,
    /// What the caller made durable, and idle WAL waiting to be confirmed
    /// after it.
    progress: std::sync::Mutex<Progress>,
}

/// What the caller made durable and what may be confirmed upstream.
#[derive(Default)]
struct Progress {
    /// The highest position confirmed upstream: everything below it is
    /// durable in the caller, or idle WAL after what is.
    acked: u64,
    /// `(h, w)`: a keepalive said the server had sent everything below `w`
    /// when transactions up to `h` were handed out and not yet durable;
    /// `w` is confirmed once `acked` reaches `h`.
    waiting: Option<(u64, u64)>,
}

impl Progress {
    /// Between transactions the server has sent everything below
    /// `wal_end`, and the caller was handed transactions up to `handed`:
    /// the position to confirm now.
    fn idle(&mut self, handed: u64, wal_end: u64) -> u64 {
        self.waiting = Some((handed, wal_end));
        self.durable(0)
    }

    /// The caller made everything up to `lsn` durable: the position to
    /// confirm now.
    fn durable(&mut self, lsn: u64) -> u64 {
        self.acked = self.acked.max(lsn);
        if let Some((handed, wal_end)) = self.waiting
            && self.acked >= handed
        {
            self.waiting = None;
            self.acked = self.acked.max(wal_end);
        }
        self.acked
    }
}

fn replication_error(e: impl std::fmt::Display) -> PgError {
    PgError::Upstream(format!("replication: {e}"))
}

/// Open the source's replication stream. Without `resume`, create the
/// slot, read every table of `tables` at the slot's consistent point
/// (the exported snapshot) and return it with the stream, which then
/// starts right after it: no gap, no overlap. With `resume`, start after
/// that LSN on the existing slot.
pub async fn open_stream(
    config: &PgConfig,
    slot: &str,
    publication: &str,
    tables: &[UpstreamTable],
    resume: Option<u64>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(Option<SnapshotData>, ReplicationStream), PgError> {
    let mut rc = pgwire_replication::ReplicationConfig::new(
        config.host.clone(),
        config.user.clone(),
        config.password.clone().unwrap_or_default(),
        config.database.clone(),
        slot.to_string(),
        publication.to_string(),
    );
    rc.port = config.port;
    rc.tls = config.tls()?;
    rc.start_lsn = pgwire_replication::Lsn(resume.unwrap_or(0));
    // Confirm durable progress to the server within a second: the slot
    // then releases WAL promptly, and a server shutting down (which waits
    // for its walsenders to be confirmed) is not held up.
    rc.status_interval = Duration::from_secs(1);
    // Room for a backlog's worth of changes between two durable steps.
    rc.buffer_events = 65_536;
    let mut client = pgwire_replication::ReplicationClient::connect_gated(rc)
        .await
        .map_err(replication_error)?;
    let snapshot = match resume {
        Some(_) => None,
        None => {
            let rows = client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')"
                ))
                .await
                .map_err(replication_error)?;
            let row = rows
                .first()
                .ok_or_else(|| replication_error("CREATE_REPLICATION_SLOT returned no row"))?;
            let field = |i: usize| -> Result<String, PgError> {
                row.get(i)
                    .and_then(|v| v.clone())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| replication_error("CREATE_REPLICATION_SLOT returned too few columns"))
            };
            let lsn = pgwire_replication::Lsn::parse(&field(1)?).map_err(replication_error)?;
            let name = field(2)?;
            let reader = connect(config).await?;
            reader
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{name}'"
                ))
                .await
                .map_err(upstream)?;
            let mut columns = Vec::new();
            for t in tables {
                columns.push(
                    table_columns(&reader, t.oid)
                        .await?
                        .into_iter()
                        .map(|(_, c)| c)
                        .collect::<Vec<_>>(),
                );
            }
            // Exact row counts at the snapshot, so progress has a total.
            let mut total = 0u64;
            for t in tables {
                let n: i64 = reader
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM {}.{}",
                            quote_ident(&t.schema),
                            quote_ident(&t.name)
                        ),
                        &[],
                    )
                    .await
                    .map_err(upstream)?
                    .get(0);
                total += n.max(0) as u64;
            }
            progress(0, total);
            let mut done = 0u64;
            let mut data = Vec::new();
            for (t, columns) in tables.iter().zip(&columns) {
                let cols: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
                let sql = format!(
                    "COPY (SELECT {} FROM {}.{}) TO STDOUT",
                    cols.join(", "),
                    quote_ident(&t.schema),
                    quote_ident(&t.name)
                );
                let stream = reader.copy_out(&sql).await.map_err(upstream)?;
                use futures::TryStreamExt;
                futures::pin_mut!(stream);
                let mut all = bytes::BytesMut::new();
                let mut reported = 0u64;
                while let Some(chunk) = stream.try_next().await.map_err(upstream)? {
                    done += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                    all.extend_from_slice(&chunk);
                    if done - reported >= 100_000 {
                        reported = done;
                        progress(done, total);
                    }
                }
                progress(done, total);
                data.push(all.freeze());
            }
            reader.batch_execute("COMMIT").await.map_err(upstream)?;
            Some(SnapshotData {
                lsn: lsn.0,
                columns,
                tables: data,
            })
        }
    };
    client.start().await.map_err(replication_error)?;
    Ok((
        snapshot,
        ReplicationStream {
            client,
            changes: Vec::new(),
            in_transaction: false,
            server_lsn: 0,
            handed: resume.unwrap_or(0),
            // What the stream resumes after is durable by definition.
            progress: std::sync::Mutex::new(Progress {
                acked: resume.unwrap_or(0),
                ..Progress::default()
            }),
        },
    ))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl ReplicationStream {
    /// The next whole upstream transaction. Cancel-safe: a call dropped
    /// while pending loses nothing.
    pub async fn next(&mut self) -> Result<Transaction, PgError> {
        use pgwire_replication::ReplicationEvent as E;
        loop {
            let event = self
                .client
                .recv()
                .await
                .map_err(replication_error)?
                .ok_or_else(|| replication_error("the stream ended"))?;
            match event {
                // Between transactions, the server has sent everything
                // below `wal_end` as whole transactions already handed
                // out: once those are durable (they may still be in
                // flight), confirm up to `wal_end`, as pg_recvlogical
                // does, so idle WAL (and a server shutting down) is not
                // held back. Confirming it earlier would let a crash lose
                // the transactions in flight: the slot would not resend.
                E::KeepAlive { wal_end, .. } => {
                    self.server_lsn = self.server_lsn.max(wal_end.0);
                    if !self.in_transaction {
                        let confirm = self
                            .progress
                            .lock()
                            .expect("progress lock")
                            .idle(self.handed, wal_end.0);
                        self.client.update_applied_lsn(pgwire_replication::Lsn(confirm));
                    }
                }
                E::Begin { .. } => {
                    self.in_transaction = true;
                    self.changes.clear();
                }
                E::XLogData { data, .. } => {
                    use crate::pgoutput::Message as M;
                    let change = match crate::pgoutput::decode(&data).map_err(replication_error)? {
                        M::Relation(r) => Change::Relation(r),
                        M::Insert { relation, new } => Change::Insert { relation, new },
                        M::Update { relation, old, new } => Change::Update { relation, old, new },
                        M::Delete { relation, old } => Change::Delete { relation, old },
                        M::Truncate { relations } => Change::Truncate(relations),
                        M::Begin { .. } | M::Commit { .. } | M::Other(_) => continue,
                    };
                    self.changes.push(change);
                }
                E::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.in_transaction = false;
                    self.server_lsn = self.server_lsn.max(end_lsn.0);
                    self.handed = self.handed.max(end_lsn.0);
                    // PostgreSQL counts from 2000-01-01.
                    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
                    return Ok(Transaction {
                        end_lsn: end_lsn.0,
                        commit_time_micros: commit_time_micros + PG_EPOCH_MICROS,
                        changes: std::mem::take(&mut self.changes),
                    });
                }
                _ => {}
            }
        }
    }

    /// The server's WAL position as it last reported it (the end of its
    /// WAL, or of the last transaction sent).
    pub fn server_lsn(&self) -> u64 {
        self.server_lsn
    }

    /// The position confirmed upstream: below it the server has sent
    /// nothing the caller has not already made durable.
    pub fn confirmed_lsn(&self) -> u64 {
        self.progress.lock().expect("progress lock").acked
    }

    /// Everything up to `lsn` is durable in Weir: the upstream may
    /// recycle it (and idle WAL after it, see [`ReplicationStream::next`]).
    pub fn ack(&self, lsn: u64) {
        let confirm = self.progress.lock().expect("progress lock").durable(lsn);
        self.client.update_applied_lsn(pgwire_replication::Lsn(confirm));
    }
}

/// Drop the replication slot `slot` upstream (if it is there).
pub async fn drop_slot(config: &PgConfig, slot: &str) -> Result<(), PgError> {
    let client = connect(config).await?;
    client
        .execute(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(upstream)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn idle_wal_is_confirmed_only_after_what_is_in_flight() {
        let mut p = Progress::default();
        // Nothing handed out: idle WAL is confirmed at once.
        assert_eq!(p.idle(0, 100), 100);
        // Transactions up to 300 handed out, 200 durable: a keepalive at
        // 400 must not confirm past 200, or a crash would lose 200..300.
        assert_eq!(p.durable(200), 200);
        assert_eq!(p.idle(300, 400), 200);
        assert_eq!(p.acked, 200);
        // A later keepalive replaces the wait with a later one.
        assert_eq!(p.idle(350, 450), 200);
        assert_eq!(p.durable(300), 300);
        assert_eq!(p.durable(350), 450);
        assert_eq!(p.acked, 450);
        // Confirmation never goes back.
        assert_eq!(p.durable(10), 450);
    }
}
