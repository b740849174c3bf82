//! The `weir` command line: wires the coordinator to a worker cluster.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;

// Arrangements hold many small rows and merge them constantly, from
// several threads: mimalloc's thread-local free lists cost a fraction of
// the system allocator's there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_allow_thp` and `mi_option_purge_delay` (their
/// positions in `mi_option_e`; libmimalloc-sys is pinned to the release
/// this is read from).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Transparent huge pages, but memory handed back to the OS only in whole
/// 2 MiB pages (mimalloc's `allow_thp = 2`). By default mimalloc purges
/// 64 KiB pieces of huge pages it has asked for; the kernel then splits
/// them and faults in, and zeroes, a whole new huge page when the piece is
/// used again. Arrangement merges and persist encoding free and reuse big
/// buffers constantly: in the Nexmark q0 profile a third of all CPU time
/// was the kernel zeroing pages. `MIMALLOC_ALLOW_THP` still decides when
/// set.
///
/// Freed memory goes back to the OS after 10 s unused rather than 10 ms
/// (as jemalloc's default decay): ingestion frees and allocates batches
/// of the same sizes all the time, and handing them back at once made the
/// kernel fault and zero them again moments later (Nexmark q0 and q2 at
/// 2 M events: q0-q2 45-55% faster with 30% less CPU, peak RSS 15-25%
/// higher).
/// `MIMALLOC_PURGE_DELAY` still decides when set.
// The only unsafe calls in Weir (the workspace denies unsafe code).
#[allow(unsafe_code)]
fn tune_allocator() {
    for (variable, option, value) in [
        ("MIMALLOC_ALLOW_THP", MI_OPTION_ALLOW_THP, 2),
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 10_000),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: sets an option's value; mimalloc reads it on its
            // next OS allocation and purge.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

/// Weir: a streaming SQL engine. Connect with psql and keep materialized
/// views exactly right as their inputs change.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines (Fluentd, Elasticsearch).
    #[arg(long, global = true, default_value = "text", env = "WEIR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the coordinator and an in-process timely cluster in one process.
    Start {
        /// Address of the PostgreSQL wire protocol listener.
        #[arg(long, default_value = "127.0.0.1:6875", env = "WEIR_PG_ADDR")]
        pg_addr: SocketAddr,
        /// Timely worker threads (default: the number of cores).
        #[arg(long, env = "WEIR_WORKERS")]
        workers: Option<usize>,
        /// Where durable state lives: a directory (`file://./weir-data`, a
        /// plain path, an EFS mount) or `s3://bucket/prefix` (configured by
        /// the standard AWS environment variables, `AWS_ENDPOINT_URL` for
        /// S3-compatible servers).
        #[arg(long, default_value = "file://./weir-data", env = "WEIR_STATE")]
        state: String,
    },
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match cli.command {
        Command::Start {
            pg_addr,
            workers,
            state,
        } => start(pg_addr, workers, &state),
    }
}

fn start(pg_addr: SocketAddr, workers: Option<usize>, state: &str) -> anyhow::Result<()> {
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-coord")
        // Statements are refused past 1,000 levels of nesting, but what
        // runs below that (DataFusion's passes, our lowering) recurses
        // with frames far larger in a debug build.
        .thread_stack_size(16 << 20)
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(pg_addr)
            .await
            .with_context(|| format!("cannot listen on {pg_addr}"))?;
        let addr = listener.local_addr()?;
        let location = weir_persist::Location::open(state)?;
        let (persist, restored) = weir_persist::Persist::open(location).await?;
        let (responses_tx, responses_rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = weir_worker::spawn(workers, responses_tx).map_err(|e| anyhow::anyhow!(e))?;
        let restarted = weir_coordinator::restore(Box::new(cluster), responses_rx, persist, restored).await?;
        println!("weir is ready: psql postgres://weir@{addr}/weir");
        info!(%addr, workers, state, "weir started");
        weir_coordinator::serve(listener, restarted, shutdown_signal()).await?;
        info!("weir stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
