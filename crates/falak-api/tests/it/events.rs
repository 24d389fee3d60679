//! Server-sent events: order, resumption, the non-following form, and lag notices.

use std::time::Duration;

use falak_api::{EventItem, EventRecord};
use futures_util::{Stream, StreamExt};

use crate::fake_node::{EVENT_CAPACITY, spawn};

fn seqs(items: &[EventItem]) -> Vec<u64> {
    items
        .iter()
        .map(|i| match i {
            EventItem::Event(e) => e.seq,
            EventItem::Lagged { .. } => 0,
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
async fn events_arrive_in_order_recent_then_live() {
    let h = spawn().await;
    {
        let mut fake = h.fake();
        for i in 0..3 {
            fake.publish("test", serde_json::json!({ "i": i }));
        }
    }
    // Two nodes were admitted when the fake started: those are events 1 and 2.
    let mut stream = Box::pin(h.client.events(true, None).await.unwrap());
    let recent = take(&mut stream, 5).await;
    assert_eq!(seqs(&recent), [1, 2, 3, 4, 5]);
    let EventItem::Event(EventRecord { kind, data, .. }) = &recent[2] else { panic!() };
    assert_eq!((kind.as_str(), data), ("test", &serde_json::json!({ "i": 0 })));
    {
        let mut fake = h.fake();
        for i in 3..6 {
            fake.publish("test", serde_json::json!({ "i": i }));
        }
    }
    assert_eq!(seqs(&take(&mut stream, 3).await), [6, 7, 8]);
}

#[tokio::test]
async fn not_following_returns_the_buffer_and_ends() {
    let h = spawn().await;
    h.fake().publish("test", serde_json::json!({}));
    let items: Vec<EventItem> = h.client.events(false, None).await.unwrap().map(|i| i.unwrap()).collect().await;
    assert_eq!(seqs(&items), [1, 2, 3]);
    let EventItem::Event(first) = &items[0] else { panic!() };
    assert_eq!(first.kind, "node_admitted");
    // `since` resumes after a sequence number.
    let items: Vec<EventItem> = h.client.events(false, Some(2)).await.unwrap().map(|i| i.unwrap()).collect().await;
    assert_eq!(seqs(&items), [3]);
}

#[tokio::test]
async fn last_event_id_resumes_and_ids_are_sent() {
    let h = spawn().await;
    let response = h
        .raw()
        .get(format!("{}/api/v1/events?follow=false", h.base))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.starts_with("event: node_admitted\nid: 2\ndata: {"), "{text}");
    assert!(!text.contains("id: 1\n"), "{text}");
}

#[tokio::test]
async fn a_lagging_client_gets_a_lagged_event_not_a_disconnect() {
    let h = spawn().await;
    let mut stream = Box::pin(h.client.events(true, None).await.unwrap());
    assert_eq!(seqs(&take(&mut stream, 2).await), [1, 2]);
    // Publish more than the channel holds while the stream cannot run (this test's runtime has
    // one thread and the loop below never yields).
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
    assert_eq!(seqs(&items[1..]), expected);
    // The stream goes on after the lag.
    h.fake().publish("after", serde_json::json!({}));
    assert_eq!(seqs(&take(&mut stream, 1).await), [last + 1]);
}
