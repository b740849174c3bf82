//! Weir's connectors: sources and sinks, each speaking Arrow batches at its
//! edge.
//!
//! Today this holds the decoder for `COPY ... FROM STDIN` (PostgreSQL's text
//! and CSV formats) and the decoder for PostgreSQL's `pgoutput` logical
//! replication messages (the start of the PostgreSQL source). Connectors turn external bytes into Arrow; they never
//! plan SQL, touch the catalog or talk to workers.

pub mod copy;
pub mod pgoutput;
pub mod postgres;
