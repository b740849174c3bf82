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
    #[error("SSL MODE '{0}' for PostgreSQL connections")]
    UnsupportedSsl(String),
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
            PgError::UnsupportedSsl(_) | PgError::Upstream(_) => None,
        }
    }
}

/// Connect with a normal (non-replication) session.
pub async fn connect(config: &PgConfig) -> Result<Client, PgError> {
    if config.ssl_mode != SslMode::Disable {
        let mode = match config.ssl_mode {
            SslMode::Require => "require",
            _ => "verify-full",
        };
        return Err(PgError::UnsupportedSsl(mode.into()));
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host(&config.host)
        .port(config.port)
        .user(&config.user)
        .dbname(&config.database)
        .application_name("weir")
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = &config.password {
        pg.password(p);
    }
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| match e.as_db_error() {
        Some(db) if db.code().code().starts_with("28") => PgError::Authentication {
            user: config.user.clone(),
            reason: db.message().to_string(),
        },
        Some(db) => PgError::Upstream(db.message().to_string()),
        None => PgError::Unreachable {
            host: config.host.clone(),
            port: config.port,
            reason: std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string()),
        },
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
