//! The proposer worker: coalesces commands from the whole node into batched ledger writes.
//!
//! Claims, starts, renewals and results are small and frequent. Writing each as its own log
//! entry would cost one fsync round per command; the proposer drains whatever is queued into one
//! `Command::Batch` entry, keeping a few writes in flight so the queue never waits on one slow
//! commit.
//!
//! Two queues: commands that keep running work alive or settle it (lease renewals, starts,
//! results, leader duties, admissions) go before new claims and client writes, so a node
//! busy claiming a large job never lets the leases of what it already runs expire.

use std::sync::Arc;

use falak_core::ledger::{Command, Outcome};
use falak_ledger::{Ledger, WriteError};
use tokio::sync::{Semaphore, mpsc};

/// The most commands in one batched entry.
pub const MAX_BATCH: usize = 64;
/// The most batched writes in flight at once.
pub const MAX_IN_FLIGHT: usize = 4;

/// Called with the command's outcome once committed (or the write error).
pub type Reply = Box<dyn FnOnce(Result<Outcome, Arc<WriteError>>) + Send>;

struct Proposal {
    command: Command,
    reply: Option<Reply>,
}

/// Handle to queue commands for the ledger.
#[derive(Clone)]
pub struct Proposer {
    urgent: mpsc::UnboundedSender<Proposal>,
    normal: mpsc::UnboundedSender<Proposal>,
}

/// Whether a command keeps running work alive or settles it (see the module docs).
fn is_urgent(command: &Command) -> bool {
    !matches!(
        command,
        Command::Claim { .. }
            | Command::SubmitJob { .. }
            | Command::ApplyCapsule { .. }
            | Command::CancelJob { .. }
            | Command::ApplyService { .. }
            | Command::RemoveService { .. }
            | Command::UpdateService { .. }
    )
}

impl Proposer {
    /// Start the worker; it stops when every handle is dropped.
    pub fn spawn(ledger: Ledger) -> Proposer {
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        let (normal, normal_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ledger, urgent_rx, normal_rx));
        Proposer { urgent, normal }
    }

    /// Queue a command; `reply` learns its outcome.
    pub fn propose(&self, command: Command, reply: Option<Reply>) {
        // A send fails only during shutdown, when outcomes no longer matter.
        let queue = if is_urgent(&command) { &self.urgent } else { &self.normal };
        let _ = queue.send(Proposal { command, reply });
    }

    /// Queue a command and wait for its outcome.
    pub async fn write(&self, command: Command) -> Result<Outcome, Arc<WriteError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.propose(command, Some(Box::new(move |r| drop(tx.send(r)))));
        rx.await.unwrap_or_else(|_| Err(Arc::new(WriteError::Shutdown)))
    }
}

async fn run(
    ledger: Ledger,
    mut urgent: mpsc::UnboundedReceiver<Proposal>,
    mut normal: mpsc::UnboundedReceiver<Proposal>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Take a write slot first, so the batch is built from the freshest queue.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let first = tokio::select! {
            biased;
            Some(p) = urgent.recv() => p,
            Some(p) = normal.recv() => p,
            else => return,
        };
        let mut batch = vec![first];
        for queue in [&mut urgent, &mut normal] {
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let _permit = permit;
            write_batch(&ledger, batch).await;
        });
    }
}

async fn write_batch(ledger: &Ledger, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let p = batch.pop().expect("one proposal");
        let result = ledger.write(p.command).await.map(|a| a.outcome).map_err(Arc::new);
        if let Some(reply) = p.reply {
            reply(result);
        }
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<Option<Reply>>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match ledger.write(Command::Batch(commands)).await {
        Ok(applied) => {
            let outcomes = match applied.outcome {
                Outcome::Batch(outcomes) => outcomes,
                other => vec![other],
            };
            let mut outcomes = outcomes.into_iter();
            for reply in replies {
                let outcome = outcomes.next().unwrap_or(Outcome::Done);
                if let Some(reply) = reply {
                    reply(Ok(outcome));
                }
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for reply in replies.into_iter().flatten() {
                reply(Err(e.clone()));
            }
        }
    }
}
