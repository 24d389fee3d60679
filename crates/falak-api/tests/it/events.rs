//! Server-sent events: ledger events with their ids in order, resumption by `since` and
//! `Last-Event-ID`, the non-following form, and gap and lag notices.

use std::time::Duration;

use falak_api::{EventItem, EventRecord};
use falak_core::ledger::EventId;
use futures_util::{Stream, StreamExt};

use crate::fake_node::{EVENT_CAPACITY, spawn};

/// The ledger index of each event; 0 for a notice.
fn indexes(items: &[EventItem]) -> Vec<u64> {
    items
        .iter()
        .map(|i| match i {
            EventItem::Event(e) => e.index().unwrap_or(0),
            EventItem::Lagged { .. } | EventItem::Gap { .. } => 0,
        })
        .collect()
}

async fn take<S: Stream<Item = Result<EventItem, falak_api::ClientError>> + Unpin>(
    stream: &mut S,
    n: usize,
) -> Vec<EventItem> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("event in time");
        out.push(next.expect("stream open").expect("event decodes"));
    }
    out
}

#[tokio::test]
async fn events_arrive_in_order_history_then_live() {
    let h = spawn().await;
    {
        let mut fake = h.fake();
        for i in 0..3 {
            fake.publish("test", serde_json::json!({ "i": i }));
        }
    }
    // Two nodes were admitted when the fake started: those are ledger entries 1 and 2.
    let mut stream = Box::pin(h.client.events(true, None).await.unwrap());
    let history = take(&mut stream, 5).await;
    assert_eq!(indexes(&history), [1, 2, 3, 4, 5]);
    let EventItem::Event(EventRecord { id, kind, data, .. }) = &history[2] else { panic!() };
    assert_eq!((*id, kind.as_str(), data), (Some(EventId::new(3, 0)), "test", &serde_json::json!({ "i": 0 })));
    {
        let mut fake = h.fake();
        for i in 3..6 {
            fake.publish("test", serde_json::json!({ "i": i }));
        }
    }
    assert_eq!(indexes(&take(&mut stream, 3).await), [6, 7, 8]);
}

#[tokio::test]
async fn not_following_returns_the_history_and_ends_and_since_resumes() {
    let h = spawn().await;
    h.fake().publish("test", serde_json::json!({}));
    let items: Vec<EventItem> = h.client.events(false, None).await.unwrap().map(|i| i.unwrap()).collect().await;
    assert_eq!(indexes(&items), [1, 2, 3]);
    let EventItem::Event(first) = &items[0] else { panic!() };
    assert_eq!(first.kind, "node_admitted");
    // `since` resumes after an event id, or after a whole entry.
    for since in [EventId::new(2, 0), EventId::end_of(2)] {
        let items: Vec<EventItem> =
            h.client.events(false, Some(since)).await.unwrap().map(|i| i.unwrap()).collect().await;
        assert_eq!(indexes(&items), [3], "since {since}");
    }
}

#[tokio::test]
async fn last_event_id_resumes_and_ids_are_sent() {
    let h = spawn().await;
    let response = h
        .raw()
        .get(format!("{}/api/v1/events?follow=false", h.base))
        .header("last-event-id", "1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.starts_with("event: node_admitted\nid: 2.0\ndata: {"), "{text}");
    assert!(!text.contains("id: 1.0\n"), "{text}");
    // A bad id is refused and the error shows the shape of a good one.
    let response = h.raw().get(format!("{}/api/v1/events?since=seven", h.base)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("1234.2"), "{text}");
}

#[tokio::test]
async fn gap_and_lag_notices_reach_the_client_and_the_stream_goes_on() {
    let h = spawn().await;
    let mut stream = Box::pin(h.client.events(true, None).await.unwrap());
    assert_eq!(indexes(&take(&mut stream, 2).await), [1, 2]);
    h.fake().send_live(EventItem::Gap { resumes_at: 40 });
    assert_eq!(take(&mut stream, 1).await, [EventItem::Gap { resumes_at: 40 }]);
    // Publish more than the live channel holds while the stream cannot run (this test's
    // runtime has one thread and the loop below never yields).
    let burst = EVENT_CAPACITY as u64 + 10;
    {
        let mut fake = h.fake();
        for i in 0..burst {
            fake.publish("burst", serde_json::json!({ "i": i }));
        }
    }
    let items = take(&mut stream, 1 + EVENT_CAPACITY).await;
    assert_eq!(items[0], EventItem::Lagged { missed: 10 });
    let last = 2 + burst;
    let expected: Vec<u64> = (last + 1 - EVENT_CAPACITY as u64..=last).collect();
    assert_eq!(indexes(&items[1..]), expected);
    h.fake().publish("after", serde_json::json!({}));
    assert_eq!(indexes(&take(&mut stream, 1).await), [last + 1]);
}
