//! `falak events [--follow]`: the event stream, one line per event.

use clap::Args;
use falak_api::{EventItem, EventRecord};
use falak_core::ledger::EventId;
use futures_util::StreamExt;

use super::Context;
use super::output::timestamp;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only ledger events after this event id (`1234.2`; `1234` for after ledger entry 1234;
    /// `0` for the whole history the node retains) [default: the last 10,000]
    #[arg(long, value_name = "ID")]
    pub since: Option<EventId>,
}

pub async fn run(ctx: &Context, args: EventsArgs) -> anyhow::Result<()> {
    if !args.follow {
        let stream = ctx.client.events(false, args.since).await?;
        print_stream(ctx, stream, &mut None).await?;
        return Ok(());
    }
    // Following: when a node stops answering (restarted, killed, cut off), resume after the
    // last ledger event printed, through the next node. Ledger events have one id on every
    // node, so none is missed or printed twice.
    let mut last = args.since;
    let mut nodes = super::Rotation::new(&ctx.clients);
    loop {
        let ended = match nodes.current().events(true, last).await {
            Ok(stream) => print_stream(ctx, stream, &mut last).await.err().map(|e| e.to_string()),
            Err(error) if error.is_retryable() => Some(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        let after = last.map_or_else(|| "the start".to_owned(), |id| format!("event {id}"));
        let why = ended.unwrap_or_else(|| "the stream ended".to_owned());
        let next = nodes.advance().await;
        eprintln!("... {why}; resuming after {after} through {}", next.base_url());
    }
}

/// Print a stream until it ends, noting the last ledger event printed in `last`.
async fn print_stream(
    ctx: &Context,
    stream: impl futures_util::Stream<Item = Result<EventItem, falak_api::ClientError>>,
    last: &mut Option<EventId>,
) -> anyhow::Result<()> {
    let mut stream = std::pin::pin!(stream);
    loop {
        // A node sends a keep-alive at least every 15 s; silence means it is paused or gone.
        let item = match tokio::time::timeout(SILENCE, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(()),
            Err(_) => anyhow::bail!("no event or keep-alive for {}s", SILENCE.as_secs()),
        };
        match item? {
            EventItem::Event(record) => {
                if record.id.is_some() {
                    *last = record.id;
                }
                if ctx.json() {
                    println!("{}", serde_json::to_string(&record)?);
                } else {
                    println!("{}", render(&record));
                }
            }
            EventItem::Lagged { missed } => {
                eprintln!("... {missed} node observations skipped: this client fell behind the stream")
            }
            EventItem::Gap { resumes_at } => {
                *last = Some(EventId::end_of(resumes_at.saturating_sub(1)));
                eprintln!(
                    "... this node no longer holds the ledger events asked for; resuming at ledger index {resumes_at} (another node may hold them)"
                )
            }
        }
    }
}

/// How long a followed stream may stay silent before the node is given up on.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// `  1234.2  2024-05-01T10:00:00Z  task_state  {"task":"j1-t0",...}` for a ledger event; a
/// node's own observation has no id and says which node saw it.
pub fn render(record: &EventRecord) -> String {
    let mut data = record.data.clone();
    // The kind is already in its own column.
    if let Some(map) = data.as_object_mut() {
        map.remove("type");
    }
    let id = record.id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    let line = format!("{id:>10}  {}  {:<16}  {data}", timestamp(record.at_ms), record.kind);
    match record.node {
        Some(node) => format!("{line}  (seen by node {})", node.short()),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event() {
        let record = EventRecord {
            id: Some(EventId::new(12, 1)),
            source: falak_api::event::EventSource::Ledger,
            node: None,
            at_ms: 0,
            kind: "task_state".into(),
            data: serde_json::json!({ "type": "task_state", "task": "j1-t0", "state": "RUNNING" }),
        };
        assert_eq!(
            render(&record),
            r#"      12.1  1970-01-01T00:00:00Z  task_state        {"state":"RUNNING","task":"j1-t0"}"#
        );
        let seen = EventRecord {
            id: None,
            source: falak_api::event::EventSource::Node,
            node: Some(falak_core::NodeId([0xab; 32])),
            kind: "node_health".into(),
            data: serde_json::json!({ "state": "SUSPECT" }),
            ..record
        };
        assert_eq!(
            render(&seen),
            r#"         -  1970-01-01T00:00:00Z  node_health       {"state":"SUSPECT"}  (seen by node abababab)"#
        );
    }
}
