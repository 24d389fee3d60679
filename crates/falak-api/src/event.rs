//! `/api/v1/events`: the event mesh as server-sent events.
//!
//! Each event goes out as `event: <kind>`, `id: <seq>` and `data: <the EventRecord as JSON>`.
//! A client too slow for the stream gets one `lagged` event saying how many it missed, and
//! the stream goes on. `Last-Event-ID` (or `?since=`) resumes after a sequence number.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiQuery, Ctx};

/// One event of the event mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Increases by one per event published on the answering node.
    pub seq: u64,
    /// When the event happened, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened: `node_suspect`, `election_won`, `task_state`, ...
    pub kind: String,
    pub data: serde_json::Value,
}

/// What the node answers to [`Action::Subscribe`]: the recent events it buffers and a receiver
/// for every later one, taken together so no event falls between them.
#[derive(Debug)]
pub struct EventSubscription {
    /// Oldest first.
    pub recent: Vec<EventRecord>,
    pub live: broadcast::Receiver<EventRecord>,
}

/// What an event stream yields to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    Event(EventRecord),
    /// The client fell behind and `missed` events were dropped for it.
    Lagged {
        missed: u64,
    },
}

/// The SSE event name of a lag notice.
pub const LAGGED: &str = "lagged";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    follow: Option<bool>,
    since: Option<u64>,
}

type SseStream = BoxStream<'static, Result<Event, Infallible>>;

pub(crate) async fn stream(
    State(ctx): State<Ctx>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = match query.since {
        Some(seq) => Some(seq),
        None => match headers.get("last-event-id") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event sequence number"))?,
            ),
        },
    };
    let subscription = ctx.ask(|reply| Action::Subscribe { reply }).await?;
    let recent: Vec<EventRecord> =
        subscription.recent.into_iter().filter(|e| since.is_none_or(|s| e.seq > s)).collect();
    // Never send an event twice, even if the node's buffer and receiver overlap.
    let mut last = recent.last().map(|e| e.seq).or(since).unwrap_or(0);
    let recent: SseStream = stream::iter(recent.into_iter().map(|e| Ok(sse_event(&e)))).boxed();
    if query.follow == Some(false) {
        return Ok(Sse::new(recent).into_response());
    }
    let live: SseStream = BroadcastStream::new(subscription.live)
        .filter_map(move |item| {
            let out = match item {
                Ok(record) if record.seq > last => {
                    last = record.seq;
                    Some(Ok(sse_event(&record)))
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Ok(lagged_event(missed))),
            };
            std::future::ready(out)
        })
        .boxed();
    let keep_alive = KeepAlive::new().interval(ctx.config.keep_alive);
    Ok(Sse::new(recent.chain(live)).keep_alive(keep_alive).into_response())
}

fn sse_event(record: &EventRecord) -> Event {
    // An event name with a line break would corrupt the stream (and makes axum panic).
    let kind: String = record.kind.chars().map(|c| if c == '\n' || c == '\r' { '_' } else { c }).collect();
    let data = serde_json::to_string(record).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(kind).id(record.seq.to_string()).data(data)
}

fn lagged_event(missed: u64) -> Event {
    Event::default().event(LAGGED).data(serde_json::json!({ "missed": missed }).to_string())
}
