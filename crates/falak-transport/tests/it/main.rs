//! Integration tests of falak-transport: real QUIC on loopback, and the in-memory network.

mod memory;
mod quic;
mod tamper;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use falak_transport::{Handler, NodeId, Protocol};
use futures_util::future::BoxFuture;

/// A handler answering `"<protocol> <sender short id> <body>"`, counting its calls.
pub fn echo(protocol: Protocol, calls: Arc<AtomicUsize>) -> Arc<dyn Handler> {
    Arc::new(move |from: NodeId, body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(
            async move { Ok(Bytes::from(format!("{protocol} {} {}", from.short(), String::from_utf8_lossy(&body)))) },
        )
    })
}

/// A handler that answers with `reply()` after `delay`.
pub fn slow(delay: std::time::Duration, reply: &'static str) -> Arc<dyn Handler> {
    Arc::new(move |_from: NodeId, _body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Bytes::from_static(reply.as_bytes()))
        })
    })
}

/// A handler that always fails with `message`.
pub fn failing(message: &'static str) -> Arc<dyn Handler> {
    Arc::new(move |_from: NodeId, _body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move { Err(message.to_owned()) })
    })
}

/// A handler answering `size` bytes of zeros.
pub fn sized(size: usize) -> Arc<dyn Handler> {
    Arc::new(move |_from: NodeId, _body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move { Ok(Bytes::from(vec![0u8; size])) })
    })
}
