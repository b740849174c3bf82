//! Weir's connectors: sources and sinks, each speaking Arrow batches at its
//! edge.
//!
//! Today this holds the decoder for `COPY ... FROM STDIN` (PostgreSQL's text
//! and CSV formats), the PostgreSQL source (connection, snapshot and
//! `pgoutput` replication stream), the load generators and the file source
//! (listing and decoding CSV, JSON and Parquet). Connectors turn
//! external bytes (or generated events) into Arrow; they never plan SQL,
//! touch the catalog or talk to workers.

pub mod copy;
pub mod files;
pub mod generator;
pub mod pgoutput;
pub mod postgres;
