//! `falak events [--follow]`: the event stream, one line per event.

use clap::Args;
use falak_api::{EventItem, EventRecord};
use futures_util::StreamExt;

use super::Context;
use super::output::timestamp;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

pub async fn run(ctx: &Context, args: EventsArgs) -> anyhow::Result<()> {
    let stream = ctx.client.events(args.follow, args.since).await?;
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item? {
            EventItem::Event(record) if ctx.json() => println!("{}", serde_json::to_string(&record)?),
            EventItem::Event(record) => println!("{}", render(&record)),
            EventItem::Lagged { missed } => {
                eprintln!("... {missed} events skipped: this client fell behind the stream")
            }
        }
    }
    Ok(())
}

/// `  12  2024-05-01T10:00:00Z  task_state  {"task":"j1-t0",...}`
pub fn render(record: &EventRecord) -> String {
    let mut data = record.data.clone();
    // The kind is already in its own column.
    if let Some(map) = data.as_object_mut() {
        map.remove("type");
    }
    format!("{:>6}  {}  {:<16}  {}", record.seq, timestamp(record.at_ms), record.kind, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event() {
        let record = EventRecord {
            seq: 12,
            at_ms: 0,
            kind: "task_state".into(),
            data: serde_json::json!({ "type": "task_state", "task": "j1-t0", "state": "RUNNING" }),
        };
        assert_eq!(
            render(&record),
            r#"    12  1970-01-01T00:00:00Z  task_state        {"state":"RUNNING","task":"j1-t0"}"#
        );
    }
}
