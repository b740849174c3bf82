//! Where state lives: a `file://` directory or an `s3://bucket/prefix`,
//! both behind one `object_store` handle.
//!
//! This module owns the translation from a `--state` URL to a store, and
//! writes, lists and deletes in local directories itself: `object_store`
//! never flushes a written file to disk (an acknowledged write must survive
//! power loss, not only a killed process), and each of its operations is a
//! hop to the blocking pool, where one per write suffices. It knows nothing
//! of what the objects mean.

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
    /// Whether the local directory takes direct writes ([`crate::direct`]).
    direct: bool,
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
                direct: false,
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
            direct: crate::direct::supported(&dir),
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
        if self.local.is_some() {
            return self.write_local(path, bytes, false).await.map(|_| ());
        }
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// Write the object `write` produces at `path`, replacing anything
    /// there, durably; returns its size in bytes. A local directory gets
    /// it streamed into the file on a blocking thread, through a small
    /// buffer: encoding a step's object into memory first had the kernel
    /// fault in and zero fresh pages for every compaction's output (a
    /// quarter of the coordinator's time in Nexmark q0). Where the
    /// directory takes them, the writes bypass the page cache
    /// ([`crate::direct`]). A store gets it encoded into memory and put.
    pub async fn put_with(
        &self,
        path: &Path,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send + 'static,
    ) -> Result<u64> {
        if self.local.is_none() {
            let mut bytes = Vec::new();
            write(&mut bytes).map_err(|source| PersistError::Io {
                path: path.to_string(),
                source,
            })?;
            let n = bytes.len() as u64;
            self.put(path, Bytes::from(bytes)).await?;
            return Ok(n);
        }
        let direct = self.direct;
        let (_, size) = self
            .write_local_with(
                path,
                move |temporary| {
                    if direct {
                        let mut out = crate::direct::DirectWriter::new(crate::direct::create(temporary)?);
                        write(&mut out)?;
                        return out.finish();
                    }
                    let mut out = Counted {
                        inner: std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(temporary)?),
                        bytes: 0,
                    };
                    write(&mut out)?;
                    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
                    Ok((file, out.bytes))
                },
                false,
            )
            .await?;
        Ok(size)
    }

    /// Write `bytes` at `path` only if nothing is there yet, durably: the
    /// store's compare-and-set.
    pub async fn create(&self, path: &Path, bytes: Bytes) -> Result<Created> {
        if self.local.is_some() {
            return self.write_local(path, bytes, true).await;
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(path, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(Created::Yes),
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
        if let Some(root) = &self.local {
            let root = root.clone();
            let dir = root.join(prefix.as_ref());
            return blocking(prefix.as_ref(), move || {
                let mut out = Vec::new();
                walk(&root, &dir, &mut out)?;
                Ok(out)
            })
            .await;
        }
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
        if let Some(root) = &self.local {
            let file = root.join(path.as_ref());
            return blocking(path.as_ref(), move || match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await;
        }
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// Write `bytes` at local `path` durably in one blocking step: a
    /// temporary file (named as `object_store` names its own, which
    /// listings skip), flushed, then renamed into place, or for `create`
    /// hard-linked (which fails if something is there), and the directory
    /// flushed. `object_store` does not fsync at all, and its write, the
    /// flush and the directory flush would be three hops to the blocking
    /// pool: on a busy machine each hop costs more than the disk.
    async fn write_local(&self, path: &Path, bytes: Bytes, create: bool) -> Result<Created> {
        self.write_local_with(
            path,
            move |temporary| {
                use std::io::Write;
                let mut f = std::fs::File::create(temporary)?;
                f.write_all(&bytes)?;
                Ok((f, bytes.len() as u64))
            },
            create,
        )
        .await
        .map(|(created, _)| created)
    }

    /// [`Location::write_local`] of the file `write` creates at the
    /// temporary path it is given and fills (returning it and how much it
    /// wrote).
    async fn write_local_with(
        &self,
        path: &Path,
        write: impl FnOnce(&std::path::Path) -> std::io::Result<(std::fs::File, u64)> + Send + 'static,
        create: bool,
    ) -> Result<(Created, u64)> {
        static TEMPORARY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let file = self.local.as_ref().expect("a local location").join(path.as_ref());
        blocking(path.as_ref(), move || {
            let dir = file.parent().expect("objects live in a directory");
            std::fs::create_dir_all(dir)?;
            let n = TEMPORARY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let temporary = PathBuf::from(format!("{}#{n}", file.display()));
            let mut size = 0;
            let written = write(&temporary).and_then(|(f, n)| {
                size = n;
                f.sync_all()
            });
            let placed = written.and_then(|()| match create {
                true => std::fs::hard_link(&temporary, &file)
                    .map(|()| Created::Yes)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => Ok(Created::AlreadyExists),
                        _ => Err(e),
                    }),
                false => std::fs::rename(&temporary, &file).map(|()| Created::Yes),
            });
            if create || placed.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            let placed = placed?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok((placed, size))
        })
        .await
    }
}

/// Run `f` on the blocking pool; an error names `path`.
async fn blocking<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let io = |source: std::io::Error| PersistError::Io {
        path: path.to_string(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)
}

/// Every object file under `dir` (relative to `root`, with its size), as
/// `object_store`'s listing gives them: temporary files skipped, a
/// missing directory empty.
fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(Path, u64)>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() && !entry.file_name().to_string_lossy().contains('#') {
            let relative = path.strip_prefix(root).map_err(std::io::Error::other)?;
            let key = Path::from_iter(relative.iter().map(|part| part.to_string_lossy().into_owned()));
            out.push((key, entry.metadata()?.len()));
        }
    }
    Ok(())
}

/// A writer that counts what passes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
