//! What can go wrong with durable state, naming the object at fault.

/// A persist failure. Every variant names what the user must look at.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The `--state` URL is not one Weir can use.
    #[error("invalid state location {url:?}: {reason}")]
    InvalidLocation { url: String, reason: String },
    /// Another process took over the state: this one must stop writing.
    #[error(
        "another weir process took over the state at {location} (epoch {theirs}, this process had epoch {ours}); this process stops writing"
    )]
    Fenced {
        location: String,
        ours: u64,
        theirs: u64,
    },
    /// An object the metadata names is not in the store.
    #[error("state object {path} is missing from {location}; refusing to serve partial data")]
    Missing { location: String, path: String },
    /// An object exists but cannot be read back.
    #[error("state object {path} in {location} is corrupt: {reason}")]
    Corrupt {
        location: String,
        path: String,
        reason: String,
    },
    /// The store refused or failed an operation.
    #[error("state store {location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// Flushing a local file to disk failed.
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Encoding a batch failed (a bug, not bad input).
    #[error("encoding a batch for {path}: {reason}")]
    Encode { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, PersistError>;
