//! `/api/v1/events`: the event mesh as server-sent events.
//!
//! Two kinds of events share one stream:
//! - **Ledger events** (`source: ledger`): what committed entries did. Every node applies the
//!   same log, so each has one id everywhere, `index.n` (the ledger index of its entry and its
//!   position there). The id is the SSE `id:`, so `Last-Event-ID` (or `?since=`) resumes after
//!   it on any node, across restarts, within the history each node retains
//!   (`falak_ledger::RETAINED_EVENTS`).
//! - **Node observations** (`source: node`): what the answering node saw itself (a peer's
//!   health, its function instances). They carry the observing node, no id, and are not
//!   replayed on resume.
//!
//! Each event goes out as `event: <kind>`, `data: <the EventRecord as JSON>` and, for ledger
//! events, `id: <index.n>`. Two notices may interrupt it: `gap` (the ledger events asked for are
//! no longer held by this node; the stream resumes where its history does) and `lagged` (the
//! client fell behind on node observations and some were dropped).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use falak_core::NodeId;
use falak_core::ledger::EventId;
use futures_util::stream::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::action::Action;
use crate::error::ApiError;
use crate::routes::{ApiQuery, Ctx};

/// How many ledger events a stream opened without `since` starts with.
pub const RECENT_EVENTS: u64 = 10_000;

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A committed ledger entry: the same event, with the same id, on every node.
    Ledger,
    /// The answering node's own observation.
    Node,
}

/// One event of the event mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// A ledger event's place in the one history: `index.n`. Absent on node observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    pub source: EventSource,
    /// The node that made a node observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Milliseconds since the Unix epoch: for ledger events the ledger's clock when the entry
    /// was applied (the same on every node), for node observations the node's clock.
    pub at_ms: u64,
    /// What happened: `node_health`, `election_won`, `task_state`, ...
    pub kind: String,
    pub data: serde_json::Value,
}

impl EventRecord {
    /// The ledger index of a ledger event.
    pub fn index(&self) -> Option<u64> {
        self.id.map(|id| id.index)
    }
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStart {
    /// The last this many retained ledger events, then this node's recent observations.
    Recent(u64),
    /// The ledger events after this id (from the start of the retained history for
    /// `EventId::end_of(0)`).
    After(EventId),
}

/// What the node answers to [`Action::Subscribe`]: the stream's items, in order, until the
/// node ends it (with `follow: false`, once the history is read) or the receiver is dropped.
#[derive(Debug)]
pub struct EventSubscription {
    pub items: mpsc::Receiver<EventItem>,
}

/// What an event stream yields to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    Event(EventRecord),
    /// The client fell behind on node observations and `missed` were dropped for it.
    Lagged {
        missed: u64,
    },
    /// The ledger events after the position asked for are not held by the answering node
    /// (dropped from its retained window, or lost to a snapshot it installed): the stream goes
    /// on from log index `resumes_at`. Another node may still hold them.
    Gap {
        resumes_at: u64,
    },
}

/// The SSE event name of a lag notice.
pub const LAGGED: &str = "lagged";
/// The SSE event name of a gap notice.
pub const GAP: &str = "gap";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    follow: Option<bool>,
    since: Option<String>,
}

pub(crate) async fn stream(
    State(ctx): State<Ctx>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = match query.since {
        Some(text) => Some(text),
        None => match headers.get("last-event-id") {
            None => None,
            Some(value) => {
                Some(value.to_str().map_err(|_| ApiError::invalid("Last-Event-ID is not visible ASCII"))?.to_owned())
            }
        },
    };
    let start = match since {
        None => EventStart::Recent(RECENT_EVENTS),
        Some(text) => EventStart::After(
            text.parse::<EventId>().map_err(|e| ApiError::invalid(format!("since / Last-Event-ID: {e}")))?,
        ),
    };
    let follow = query.follow.unwrap_or(true);
    let subscription = ctx.ask(|reply| Action::Subscribe { start, follow, reply }).await?;
    let events = ReceiverStream::new(subscription.items).map(|item| Ok::<_, Infallible>(sse_event(&item)));
    let keep_alive = KeepAlive::new().interval(ctx.config.keep_alive);
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

fn sse_event(item: &EventItem) -> Event {
    match item {
        EventItem::Event(record) => {
            // An event name with a line break would corrupt the stream (and makes axum panic).
            let kind: String = record.kind.chars().map(|c| if c == '\n' || c == '\r' { '_' } else { c }).collect();
            let data = serde_json::to_string(record).unwrap_or_else(|_| "{}".to_owned());
            let event = Event::default().event(kind);
            let event = match record.id {
                Some(id) => event.id(id.to_string()),
                None => event,
            };
            event.data(data)
        }
        EventItem::Lagged { missed } => {
            Event::default().event(LAGGED).data(serde_json::json!({ "missed": missed }).to_string())
        }
        // The id moves past the gap, so a client that reconnects is not told again.
        EventItem::Gap { resumes_at } => Event::default()
            .event(GAP)
            .id(EventId::end_of(resumes_at.saturating_sub(1)).to_string())
            .data(serde_json::json!({ "resumes_at": resumes_at }).to_string()),
    }
}
