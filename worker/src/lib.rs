//! A timely cluster that executes the command protocol.
//!
//! [`spawn`] starts `N` timely worker threads in this process. Each worker
//! owns an engine [`ComputeState`]; the returned [`Cluster`] broadcasts every
//! command to all of them in order and wakes them up. Worker threads answer
//! on the response channel. This crate knows nothing of SQL or clients; a
//! future `weir worker` process will feed the same loop from gRPC.

use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use timely::WorkerConfig;
use timely::communication::Config as CommConfig;
use tracing::info;
use weir_engine::ComputeState;
use weir_protocol::{Command, CommandSink, ResponseSender};

/// The handle to an in-process cluster.
pub struct Cluster {
    senders: Vec<Sender<Command>>,
    threads: Vec<Thread>,
    guards: Option<timely::communication::WorkerGuards<()>>,
}

/// Start `workers` timely worker threads answering on `responses`.
pub fn spawn(workers: usize, responses: ResponseSender) -> Result<Cluster, String> {
    let workers = workers.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| unbounded::<Command>()).unzip();
    let receivers = std::sync::Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>());
    let (thread_tx, thread_rx) = unbounded::<(usize, Thread)>();
    let config = timely::Config {
        communication: CommConfig::Process(workers),
        worker: WorkerConfig::default(),
    };
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let commands: Receiver<Command> = receivers.lock().expect("receivers lock")[index]
            .take()
            .expect("each worker takes its own receiver once");
        let _ = thread_tx.send((index, std::thread::current()));
        let mut state = ComputeState::new(responses.clone());
        'run: loop {
            let mut commanded = false;
            while let Ok(command) = commands.try_recv() {
                commanded = true;
                if !state.handle(worker, command) {
                    break 'run;
                }
            }
            // A command may have made work (a write) or asked for an answer
            // that is already there (a peek): step without parking then.
            // Otherwise park: workers are woken by `Cluster::send` and by
            // timely's own activations; the timeout only bounds a missed
            // wake-up.
            let park = if commanded {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            worker.step_or_park(Some(park));
            state.poll(worker);
        }
    })?;
    let mut threads = vec![None; workers];
    for _ in 0..workers {
        let (i, t) = thread_rx.recv().map_err(|e| e.to_string())?;
        threads[i] = Some(t);
    }
    info!(workers, "timely cluster started");
    Ok(Cluster {
        senders,
        threads: threads
            .into_iter()
            .map(|t| t.expect("every worker reported"))
            .collect(),
        guards: Some(guards),
    })
}

impl CommandSink for Cluster {
    fn send(&mut self, command: Command) {
        for (s, t) in self.senders.iter().zip(&self.threads) {
            let _ = s.send(command.clone());
            t.unpark();
        }
    }

    fn workers(&self) -> usize {
        self.senders.len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.send(Command::Shutdown);
        if let Some(guards) = self.guards.take() {
            drop(guards.join());
        }
    }
}
