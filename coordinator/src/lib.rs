//! Weir's coordinator: the catalog, the timestamp oracle, the pgwire server
//! and command dispatch to workers.
//!
//! The coordinator owns everything a client can see: names, SQLSTATEs,
//! timestamps, and when a change counts as done (once it is durable). It
//! reaches compute only through the command protocol (`weir-protocol`) via
//! the [`controller::Controller`], and storage only through `weir-persist`
//! via [`durable::Durable`]; it must not depend on the engine. `weir start`
//! wires it to an in-process cluster.

pub mod catalog;
pub mod controller;
pub mod durable;
pub mod error;
pub mod files;
pub mod generate;
pub mod index;
pub mod ingest;
mod keys;
pub mod record;
pub mod sequencer;
pub mod server;
pub mod show;
pub mod sources;
pub mod system;
pub mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use weir_persist::{Persist, Restored};
use weir_protocol::{CommandSink, ResponseReceiver};

pub use error::AdapterError;
pub use sequencer::Coordinator;

/// A coordinator restored from durable state, ready to serve.
pub struct Restarted {
    coord: Arc<Coordinator>,
    fatal: watch::Receiver<Option<String>>,
}

/// Take over `sink`, replay `restored` into a fresh coordinator, and make
/// every later change durable through `persist`.
pub async fn restore(
    sink: Box<dyn CommandSink>,
    responses: ResponseReceiver,
    persist: Persist,
    restored: Restored,
) -> Result<Restarted, AdapterError> {
    let controller = controller::Controller::new(sink, responses);
    let coord = Arc::new(Coordinator::new(controller.clone()));
    let tables = restored.shards.len();
    let items = restored.catalog.len();
    let replayed = coord.restore(restored).await?;
    info!(items, shards = tables, "catalog and tables restored");
    let (fatal_tx, fatal) = watch::channel(None);
    coord.set_durable(durable::Durable::start(persist, controller, fatal_tx));
    coord.serve_widening();
    coord.record_views(replayed.outputs)?;
    for (name, position, current) in replayed.sources {
        coord.start_source(&name, position, current)?;
    }
    Ok(Restarted { coord, fatal })
}

/// Why serving stopped other than by the shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The state store failed or another process took it over.
    #[error("{0}")]
    Fatal(String),
}

/// Serve the PostgreSQL wire protocol on `listener` until `shutdown`
/// resolves, or until the durable state cannot be written any more.
pub async fn serve(
    listener: TcpListener,
    restarted: Restarted,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let Restarted { coord, mut fatal } = restarted;
    let factory = Arc::new(server::HandlerFactory(server::Handler::new(coord)));
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "pgwire listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = fatal.changed() => {
                let reason = fatal.borrow().clone();
                match (changed, reason) {
                    (Ok(()), Some(reason)) => {
                        // Let sessions send the refused statements their
                        // errors before the process goes.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        return Err(ServeError::Fatal(reason));
                    }
                    // The committer is gone without a reason: nothing can
                    // become durable any more.
                    (Err(_), _) => return Err(ServeError::Fatal("the committer stopped".into())),
                    (Ok(()), None) => {}
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let factory = factory.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, factory).await {
                            warn!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "accept failed"),
            }
        }
    }
    info!("pgwire server stopped");
    Ok(())
}
