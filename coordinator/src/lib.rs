//! Weir's coordinator: the catalog, the timestamp oracle, the pgwire server
//! and command dispatch to workers.
//!
//! The coordinator owns everything a client can see: names, SQLSTATEs,
//! timestamps. It reaches compute only through the command protocol
//! (`weir-protocol`) via the [`controller::Controller`], and must not depend
//! on the engine. `weir start` wires it to an in-process cluster.

pub mod catalog;
pub mod controller;
pub mod error;
pub mod sequencer;
pub mod server;
pub mod show;
pub mod system;
pub mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};
use weir_protocol::{CommandSink, ResponseReceiver};

pub use error::AdapterError;
pub use sequencer::Coordinator;

/// Serve the PostgreSQL wire protocol on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    listener: TcpListener,
    sink: Box<dyn CommandSink>,
    responses: ResponseReceiver,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let controller = controller::Controller::new(sink, responses);
    let coord = Arc::new(Coordinator::new(controller));
    let factory = Arc::new(server::HandlerFactory(server::Handler::new(coord)));
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "pgwire listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
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
