//! Weir's durable state: every table and every materialized view's output
//! is a **shard**, an append-only list of batch objects (Arrow IPC: row
//! columns plus a diff, see [`batch`]) with time bounds, and the catalog is
//! a list of DDL statements. One small metadata object names them all, so
//! one step can change several shards and the catalog atomically.
//!
//! The metadata is versioned: version `v` lives at `meta/{v:020}.json` and
//! the next version is written with a create-if-absent put, the store's
//! compare-and-set (`file://` and `s3://` both have it through
//! `object_store`). Two processes can therefore never both write version
//! `v + 1`. A process opening the state takes it over by writing a version
//! with a higher **epoch**; the previous owner's next write then finds its
//! version taken (or, if old versions were already cleaned away, a newer one
//! listed above it) and stops: it is fenced. A write is acknowledged only
//! once its metadata version is in the store, so nothing acknowledged can be
//! lost, and a crash between writing batch objects and the metadata leaves
//! unreferenced objects that the next owner deletes.
//!
//! This crate owns the object layout and the protocol. It knows Arrow but
//! not SQL: catalog entries are opaque statements, tables are shard ids.

pub mod batch;
mod direct;
pub mod error;
pub mod location;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use batch::Updates;
pub use error::{PersistError, Result};
pub use location::Location;

use location::Created;

/// The metadata format this build reads and writes.
const FORMAT: u32 = 1;

/// One durable catalog entry: the statement that recreates it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogItem {
    /// The id the relation had; restored as is.
    pub id: u64,
    /// The `CREATE` statement.
    pub sql: String,
    /// Whether the relation has a shard: a table's rows, a materialized
    /// view's output.
    pub shard: bool,
    /// What the statement alone does not say (a source's resolved
    /// upstream tables), opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A change to the durable catalog.
#[derive(Debug, Clone)]
pub enum CatalogOp {
    Create(CatalogItem),
    Drop(u64),
}

/// A batch object of a shard: its updates are at times in `[lower, upper)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchRef {
    pub key: String,
    pub lower: u64,
    pub upper: u64,
    /// Updates (rows) in the object.
    pub updates: u64,
    pub bytes: u64,
    /// Updates with a negative diff (deletions) among them. Metadata from
    /// before this was recorded reads as none, which only makes their
    /// compaction lazier.
    #[serde(default)]
    pub deletes: u64,
}

/// The metadata: everything that is durable, by reference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// Bumped by every process that takes the state over.
    pub epoch: u64,
    /// Every table shard is complete for times below `upper` (a view's
    /// output shard, for times below its last batch's `upper`).
    pub upper: u64,
    /// The next catalog id to hand out.
    pub next_id: u64,
    /// The catalog, in creation order.
    pub catalog: Vec<CatalogItem>,
    /// Each shard's batches, oldest first.
    pub shards: BTreeMap<u64, Vec<BatchRef>>,
    /// Each source's resume position (an upstream LSN), made durable in
    /// the same version as the data it covers.
    #[serde(default)]
    pub positions: BTreeMap<u64, u64>,
}

impl State {
    fn empty() -> State {
        State {
            format: FORMAT,
            epoch: 0,
            upper: 0,
            next_id: 1,
            catalog: Vec::new(),
            shards: BTreeMap::new(),
            positions: BTreeMap::new(),
        }
    }

    /// Live batch objects, for the storage report.
    pub fn objects(&self) -> usize {
        self.shards.values().map(Vec::len).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.shards.values().flatten().map(|b| b.bytes).sum()
    }
}

/// A merge of consecutive batches of one shard, computed off to the side
/// and applied by the next [`Persist::commit`].
#[derive(Debug, Clone)]
pub struct Compacted {
    pub shard: u64,
    /// The keys of the batches merged, oldest first.
    pub replaced: Vec<String>,
    /// The merged batch; `None` when everything cancelled out.
    pub merged: Option<BatchRef>,
}

/// One atomic step: catalog changes, then appends at `time`, then
/// outputs, then compactions. All of it becomes durable, or none.
#[derive(Debug, Default)]
pub struct Commit {
    /// The time of the appends; `None` for a step without appends.
    pub time: Option<u64>,
    pub catalog: Vec<CatalogOp>,
    /// Table writes, all at `time`.
    /// Each shard's parts, written as one object.
    pub appends: Vec<(u64, Vec<Updates>)>,
    /// A materialized view's output changes at times below the `u64`
    /// (its frontier), recorded behind the writes that caused them.
    pub outputs: Vec<(u64, Vec<Updates>, u64)>,
    pub compacted: Vec<Compacted>,
    /// The catalog's next id after this step.
    pub next_id: u64,
    /// Sources' new resume positions, durable with the appends.
    pub positions: Vec<(u64, u64)>,
}

/// What a restart finds: the catalog, and each shard's rows consolidated
/// (a diff per distinct row).
#[derive(Debug)]
pub struct Restored {
    pub catalog: Vec<CatalogItem>,
    pub positions: BTreeMap<u64, u64>,
    pub shards: BTreeMap<u64, Option<Updates>>,
    pub upper: u64,
    pub next_id: u64,
}

/// The owner of a state location: the only writer while not fenced.
pub struct Persist {
    location: Location,
    state: State,
    version: u64,
    /// Names batch objects uniquely within this epoch.
    counter: Arc<AtomicU64>,
}

fn meta_path(version: u64) -> Path {
    Path::from(format!("meta/{version:020}.json"))
}

fn version_of(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

/// The epoch that wrote a batch object, from its name.
fn epoch_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}

/// How many batches a shard may hold before the newest are merged. Eight
/// rather than fewer: a simulation of the updates benchmark's shard (a
/// 1 M-row base, 2,000-row steps) rewrites each update 3.6 times with 8
/// and the run rule below, 7.0 with 4 and a factor of 2, for at most 11
/// objects instead of 7 (appends: 4.4 against 6.9 rewrites, 12 objects).
const COMPACT_AFTER: usize = 8;

/// Objects of only insertions this large are left as they are: merging
/// them would cancel nothing, and an appended table's objects were each
/// rewritten about twice more (Nexmark q0 at 10 M events: 35% of the
/// server's CPU and 2.5 GB of peak memory went to compaction). Half a
/// million rather than a million: eight of a load generator's steps
/// (92,000 bids each) make a sealed object at once, where they were
/// merged a second time with the next seven.
const SEALED_UPDATES: u64 = 1 << 19;

/// Objects of only insertions are merged this many at a time, so that
/// each row is rewritten about once on its way to a sealed object.
const INSERT_FANOUT: usize = 8;

impl Persist {
    /// Open the state at `location` and take it over: read the latest
    /// metadata, write the next version with a bumped epoch (fencing any
    /// previous owner), read back every shard, and delete what no version
    /// references any more.
    pub async fn open(location: Location) -> Result<(Persist, Restored)> {
        let mut attempts = 0;
        let (version, state) = loop {
            attempts += 1;
            let (version, mut state) = match latest_version(&location).await? {
                None => (0, State::empty()),
                Some(v) => (v, read_meta(&location, v).await?),
            };
            state.epoch += 1;
            let next = version + 1;
            match location.create(&meta_path(next), encode_meta(&state)?).await? {
                Created::Yes if latest_version(&location).await? == Some(next) => break (next, state),
                // Another process moved the state on meanwhile: read again.
                _ if attempts < 10 => continue,
                _ => {
                    return Err(PersistError::Fenced {
                        location: location.url().to_string(),
                        ours: state.epoch,
                        theirs: state.epoch,
                    });
                }
            }
        };
        info!(
            location = location.url(),
            epoch = state.epoch,
            version,
            "took over state"
        );
        let persist = Persist {
            location,
            state,
            version,
            counter: Arc::new(AtomicU64::new(0)),
        };
        let restored = persist.restore().await?;
        persist.collect_garbage().await?;
        Ok((persist, restored))
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Read every shard back, consolidated.
    async fn restore(&self) -> Result<Restored> {
        let mut shards = BTreeMap::new();
        for (shard, refs) in &self.state.shards {
            let objects = read_batches(&self.location, refs.iter().map(|r| r.key.clone()).collect()).await?;
            let Some(first) = objects.first().and_then(|o| o.first()) else {
                shards.insert(*shard, None);
                continue;
            };
            let schema = first.batch.schema();
            let corrupt = |reason: String| PersistError::Corrupt {
                location: self.location.url().to_string(),
                path: format!("data/{shard}"),
                reason,
            };
            if let Some(p) = objects
                .iter()
                .position(|o| o.iter().any(|p| p.batch.schema() != schema))
            {
                return Err(corrupt(format!(
                    "{} has other columns than {}",
                    refs[p].key, refs[0].key
                )));
            }
            let parts: Vec<Updates> = objects.into_iter().flatten().collect();
            let rows = batch::consolidate(&schema, &parts).map_err(corrupt)?;
            if rows.diffs.iter().any(|d| *d < 0) {
                return Err(corrupt("a row is deleted more often than it was inserted".into()));
            }
            shards.insert(*shard, Some(rows));
        }
        Ok(Restored {
            catalog: self.state.catalog.clone(),
            positions: self.state.positions.clone(),
            shards,
            upper: self.state.upper,
            next_id: self.state.next_id,
        })
    }

    /// Delete metadata versions below ours and batch objects that no
    /// version references, written by earlier epochs (a crash between
    /// writing a batch and its metadata leaves such objects).
    async fn collect_garbage(&self) -> Result<()> {
        let live: HashSet<&str> = self
            .state
            .shards
            .values()
            .flatten()
            .map(|b| b.key.as_str())
            .collect();
        let mut deleted = 0;
        for (path, _) in self.location.list(&Path::from("data")).await? {
            let key = path.to_string();
            if !live.contains(key.as_str()) && epoch_of(&key).is_some_and(|e| e < self.state.epoch) {
                self.location.delete(&path).await?;
                deleted += 1;
            }
        }
        for (path, _) in self.location.list(&Path::from("meta")).await? {
            if version_of(&path).is_some_and(|v| v < self.version) {
                self.location.delete(&path).await?;
            }
        }
        if deleted > 0 {
            info!(deleted, "removed batch objects no metadata references");
        }
        Ok(())
    }

    fn batch_key(&self, shard: u64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("data/{shard}/{:010}-{n:012}.arrow", self.state.epoch)
    }

    /// Make `commit` durable. On [`PersistError::Fenced`] this process no
    /// longer owns the state and must stop.
    pub async fn commit(&mut self, commit: Commit) -> Result<()> {
        let mut next = self.state.clone();
        let mut garbage = Vec::new();
        for op in commit.catalog {
            match op {
                CatalogOp::Create(item) => {
                    if item.shard {
                        next.shards.insert(item.id, Vec::new());
                    }
                    next.catalog.retain(|i| i.id != item.id);
                    next.catalog.push(item);
                }
                CatalogOp::Drop(id) => {
                    next.catalog.retain(|i| i.id != id);
                    next.positions.remove(&id);
                    garbage.extend(next.shards.remove(&id).into_iter().flatten().map(|b| b.key));
                }
            }
        }
        next.next_id = next.next_id.max(commit.next_id);
        for (source, lsn) in commit.positions {
            if next.catalog.iter().any(|i| i.id == source) {
                next.positions.insert(source, lsn);
            }
        }
        let mut batches: Vec<(u64, Vec<Updates>, u64, u64)> = Vec::new();
        if let Some(time) = commit.time {
            let lower = self.state.upper;
            let upper = (time + 1).max(lower);
            batches.extend(commit.appends.into_iter().map(|(s, u)| (s, u, lower, upper)));
            next.upper = upper;
        }
        for (shard, updates, upper) in commit.outputs {
            let lower = next
                .shards
                .get(&shard)
                .and_then(|refs| refs.last())
                .map(|b| b.upper)
                .unwrap_or(0);
            batches.push((shard, updates, lower, upper.max(lower)));
        }
        {
            let mut writes = Vec::new();
            for (shard, updates, lower, upper) in batches {
                let updates: Vec<Updates> = updates.into_iter().filter(|u| !u.is_empty()).collect();
                if updates.is_empty() || !next.shards.contains_key(&shard) {
                    continue;
                }
                let key = self.batch_key(shard);
                let n = updates.iter().map(|u| u.len() as u64).sum();
                let deletes = batch::deletes(&updates);
                let location = &self.location;
                writes.push(async move {
                    let path = Path::from(key.as_str());
                    let bytes = location
                        .put_with(&path, move |out| batch::encode_to(&updates, out))
                        .await?;
                    let batch = BatchRef {
                        key,
                        lower,
                        upper,
                        updates: n,
                        bytes,
                        deletes,
                    };
                    Ok::<_, PersistError>((shard, batch))
                });
            }
            for (shard, batch) in futures::future::try_join_all(writes).await? {
                next.shards.get_mut(&shard).expect("checked above").push(batch);
            }
        }
        for c in commit.compacted {
            let applies = next.shards.get(&c.shard).and_then(|refs| {
                let start = refs.iter().position(|b| Some(&b.key) == c.replaced.first())?;
                let run = refs.get(start..start + c.replaced.len())?;
                run.iter()
                    .zip(&c.replaced)
                    .all(|(b, k)| &b.key == k)
                    .then_some(start)
            });
            match applies {
                Some(start) => {
                    let refs = next.shards.get_mut(&c.shard).expect("found above");
                    let gone: Vec<BatchRef> = refs
                        .splice(start..start + c.replaced.len(), c.merged.clone())
                        .collect();
                    garbage.extend(gone.into_iter().map(|b| b.key));
                }
                // The shard was dropped meanwhile: the merge is garbage.
                None => garbage.extend(c.merged.map(|b| b.key)),
            }
        }
        self.publish(next).await?;
        let location = &self.location;
        let deletes = garbage.iter().map(|key| async move {
            if let Err(e) = location.delete(&Path::from(key.as_str())).await {
                warn!(error = %e, key, "could not delete a batch object; the next start removes it");
            }
        });
        futures::future::join_all(deletes).await;
        Ok(())
    }

    /// Write `next` as the next metadata version, or find this process
    /// fenced.
    async fn publish(&mut self, next: State) -> Result<()> {
        let version = self.version + 1;
        let created = self
            .location
            .create(&meta_path(version), encode_meta(&next)?)
            .await?;
        // A version above ours means a newer owner moved on (and may have
        // deleted the version we just wrote into).
        let latest = latest_version(&self.location).await?;
        if created == Created::AlreadyExists || latest != Some(version) {
            let theirs = match latest {
                Some(v) => read_meta(&self.location, v).await.map(|s| s.epoch).unwrap_or(0),
                None => 0,
            };
            return Err(PersistError::Fenced {
                location: self.location.url().to_string(),
                ours: self.state.epoch,
                theirs,
            });
        }
        self.location.delete(&meta_path(self.version)).await?;
        self.version = version;
        self.state = next;
        Ok(())
    }

    /// The next merge worth doing for each shard not in `busy`: the newest
    /// run of batches in which each is no larger than all newer ones
    /// together, so every row is rewritten O(log n) times and a shard
    /// holds O(log n) objects; a large old batch (a table's initial load)
    /// is rewritten only once as much has arrived after it. Where that run
    /// holds no deletion, only the newest small objects are merged, and
    /// only [`INSERT_FANOUT`] or more at once.
    pub fn compactions_due(&self, busy: &HashSet<u64>) -> Vec<(u64, Vec<BatchRef>)> {
        let mut out = Vec::new();
        for (shard, refs) in &self.state.shards {
            if busy.contains(shard) || refs.len() <= COMPACT_AFTER {
                continue;
            }
            let mut total = 0u64;
            let mut start = refs.len();
            for (i, b) in refs.iter().enumerate().rev() {
                if total > 0 && b.updates > total {
                    break;
                }
                total += b.updates.max(1);
                start = i;
            }
            if refs[start..].iter().all(|b| b.deletes == 0) {
                // Nothing to cancel: merge only small objects, several at
                // once (see `SEALED_UPDATES`).
                let small = refs
                    .iter()
                    .rev()
                    .take_while(|b| b.deletes == 0 && b.updates < SEALED_UPDATES)
                    .count();
                if small >= INSERT_FANOUT {
                    out.push((*shard, refs[refs.len() - small..].to_vec()));
                }
                continue;
            }
            if refs.len() - start >= 2 {
                out.push((*shard, refs[start..].to_vec()));
            }
        }
        out
    }

    /// A handle that can merge batches without holding the owner.
    pub fn compactor(&self) -> Compactor {
        Compactor {
            location: self.location.clone(),
            epoch: self.state.epoch,
            counter: self.counter.clone(),
        }
    }
}

/// Merges batches of a shard into one consolidated batch, off to the side.
#[derive(Clone)]
pub struct Compactor {
    location: Location,
    epoch: u64,
    counter: Arc<AtomicU64>,
}

impl Compactor {
    /// Read `run`, consolidate it, and write the result as a new object.
    pub async fn compact(&self, shard: u64, run: Vec<BatchRef>) -> Result<Compacted> {
        let replaced: Vec<String> = run.iter().map(|b| b.key.clone()).collect();
        let parts: Vec<Updates> = read_batches(&self.location, replaced.clone())
            .await?
            .into_iter()
            .flatten()
            .collect();
        let schema = parts[0].batch.schema();
        let merged = batch::consolidate_parts(&schema, parts).map_err(|reason| PersistError::Corrupt {
            location: self.location.url().to_string(),
            path: replaced.join(", "),
            reason,
        })?;
        if merged.is_empty() {
            return Ok(Compacted {
                shard,
                replaced,
                merged: None,
            });
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let key = format!("data/{shard}/{:010}-{n:012}.arrow", self.epoch);
        let updates = merged.iter().map(|p| p.len() as u64).sum();
        let deletes = batch::deletes(&merged);
        let bytes = self
            .location
            .put_with(&Path::from(key.as_str()), move |out| {
                batch::encode_to(&merged, out)
            })
            .await?;
        let merged_ref = BatchRef {
            key: key.clone(),
            lower: run[0].lower,
            upper: run[run.len() - 1].upper,
            updates,
            bytes,
            deletes,
        };
        Ok(Compacted {
            shard,
            replaced,
            merged: Some(merged_ref),
        })
    }
}

/// Read the batch objects `keys`, a few at a time, in order.
/// Each object's parts (never none: an empty object has one empty part).
async fn read_batches(location: &Location, keys: Vec<String>) -> Result<Vec<Vec<Updates>>> {
    futures::stream::iter(keys.into_iter().map(|key| {
        let location = location.clone();
        async move { read_batch(&location, &key).await }
    }))
    .buffered(8)
    .try_collect()
    .await
}

async fn read_batch(location: &Location, key: &str) -> Result<Vec<Updates>> {
    let bytes = location.get(&Path::from(key)).await?;
    batch::decode_parts(bytes).map_err(|reason| PersistError::Corrupt {
        location: location.url().to_string(),
        path: key.to_string(),
        reason,
    })
}

async fn latest_version(location: &Location) -> Result<Option<u64>> {
    let listed = location.list(&Path::from("meta")).await?;
    Ok(listed.iter().filter_map(|(p, _)| version_of(p)).max())
}

async fn read_meta(location: &Location, version: u64) -> Result<State> {
    let path = meta_path(version);
    let bytes = location.get(&path).await?;
    let corrupt = |reason: String| PersistError::Corrupt {
        location: location.url().to_string(),
        path: path.to_string(),
        reason,
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if state.format != FORMAT {
        return Err(corrupt(format!(
            "metadata format {} is not {FORMAT}, the one this build reads",
            state.format
        )));
    }
    Ok(state)
}

fn encode_meta(state: &State) -> Result<bytes::Bytes> {
    serde_json::to_vec(state)
        .map(bytes::Bytes::from)
        .map_err(|e| PersistError::Encode {
            path: "meta".into(),
            reason: e.to_string(),
        })
}
