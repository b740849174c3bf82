//! Where state lives: a `file://` directory or an `s3://bucket/prefix`,
//! both behind one `object_store` handle.
//!
//! This module owns the translation from a `--state` URL to a store and
//! the one thing `object_store` leaves out for local directories: flushing
//! a written file to disk, so an acknowledged write survives power loss and
//! not only a killed process. It knows nothing of what the objects mean.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{PersistError, Result};

/// An opened state location.
#[derive(Debug, Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    /// The URL as the user gave it, for messages.
    url: String,
    /// The local directory, for `file://`: written files are fsynced.
    local: Option<PathBuf>,
}

/// The outcome of a create-if-absent put.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Yes,
    AlreadyExists,
}

impl Location {
    /// Open `url`: `file:///abs/dir`, `file://./rel/dir`, a plain path, or
    /// `s3://bucket/prefix` configured from the standard AWS environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL` for S3-compatible servers, `AWS_ALLOW_HTTP`).
    pub fn open(url: &str) -> Result<Location> {
        let invalid = |reason: String| PersistError::InvalidLocation {
            url: url.to_string(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket named".into()));
            }
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Location {
                store,
                url: url.to_string(),
                local: None,
            });
        }
        let dir = match url.strip_prefix("file://") {
            Some(p) => p,
            None if url.contains("://") => {
                return Err(invalid("the scheme must be file:// or s3://".into()));
            }
            None => url,
        };
        if dir.is_empty() {
            return Err(invalid("no directory named".into()));
        }
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("cannot create the directory: {e}")))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| invalid(format!("cannot resolve the directory: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| invalid(e.to_string()))?;
        Ok(Location {
            store: Arc::new(fs),
            url: url.to_string(),
            local: Some(dir),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn store_error(&self, source: object_store::Error) -> PersistError {
        PersistError::Store {
            location: self.url.clone(),
            source,
        }
    }

    /// Write `bytes` at `path`, replacing anything there, durably.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.store_error(e))?;
        self.sync(path).await
    }

    /// Write `bytes` at `path` only if nothing is there yet, durably: the
    /// store's compare-and-set.
    pub async fn create(&self, path: &Path, bytes: Bytes) -> Result<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(path, PutPayload::from(bytes), opts).await {
            Ok(_) => {
                self.sync(path).await?;
                Ok(Created::Yes)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// Read the whole object at `path`; a missing object is
    /// [`PersistError::Missing`].
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        let got = match self.store.get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(PersistError::Missing {
                    location: self.url.clone(),
                    path: path.to_string(),
                });
            }
            Err(e) => return Err(self.store_error(e)),
        };
        got.bytes().await.map_err(|e| self.store_error(e))
    }

    /// Names and sizes of every object under `prefix`.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<(Path, u64)>> {
        let listed: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(listed.into_iter().map(|m| (m.location, m.size)).collect())
    }

    /// Remove `path`; one already gone is fine.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// Flush a freshly written local file and its directory entry to disk.
    /// `object_store` writes through a rename but does not fsync; an
    /// acknowledged write must survive a power cut, not just a killed
    /// process. S3 is durable once the put returns.
    async fn sync(&self, path: &Path) -> Result<()> {
        let Some(root) = &self.local else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || {
            let io = |e: std::io::Error| PersistError::Io {
                path: file.display().to_string(),
                source: e,
            };
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| PersistError::Io {
            path: path.to_string(),
            source: std::io::Error::other(e),
        })?
    }
}
