//! The node's log: `RUST_LOG` directives (default `info,openraft=warn,quinn=warn`) to stderr,
//! with the consensus library's expected chatter kept out unless debug logging is on.
//!
//! openraft reports every replication or vote RPC that times out or finds a peer unreachable
//! as a WARN or ERROR line: while a peer is down, paused or partitioned that is thousands of
//! lines per minute (about 2,200 in a 5-minute fault run), all expected, and they bury the
//! lines that matter. Falak's own logs already say when a peer is SUSPECT or OFFLINE and when
//! a write could not reach a quorum. These lines are shown only when a directive asks for
//! debug (or trace) output.

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_DIRECTIVES: &str = "info,openraft=warn,quinn=warn";

/// Install the node's logger; a second call does nothing.
pub fn init_node_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_DIRECTIVES));
    let debug = filter.max_level_hint().is_some_and(|max| max >= tracing::level_filters::LevelFilter::DEBUG);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(layer, ConsensusChatter { show: debug }.and_env(filter)))
        .try_init();
}

/// Drops openraft's WARN and ERROR lines about RPCs that timed out or found no peer (what a
/// down or partitioned peer causes), unless `show`.
#[derive(Debug, Clone, Copy)]
pub struct ConsensusChatter {
    pub show: bool,
}

impl ConsensusChatter {
    fn and_env(self, env: EnvFilter) -> Both {
        Both { chatter: self, env }
    }

    /// Whether an event is expected consensus chatter.
    pub fn is_chatter(metadata: &Metadata<'_>, message: &str) -> bool {
        if !metadata.target().starts_with("openraft") {
            return false;
        }
        let level = *metadata.level();
        match level {
            Level::ERROR => matches!(message, "RPCError" | "timeout" | "while requesting vote"),
            Level::WARN => {
                message.starts_with("error replication to target=")
                    || message.starts_with("heartbeat error:")
                    || message == "update progress error"
                    || message == "InstallSnapshot RPC timed out"
                    || message == "error sending InstallSnapshot RPC"
                    || message.ends_with("backoff mode: drain events without processing them")
            }
            _ => false,
        }
    }
}

/// The env filter, then the chatter filter.
struct Both {
    chatter: ConsensusChatter,
    env: EnvFilter,
}

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Filter<S> for Both {
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        Filter::enabled(&self.env, metadata, cx)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        let interest = Filter::<S>::callsite_enabled(&self.env, metadata);
        // openraft's events are judged one by one (by their message), never cached as always on.
        if interest.is_always() && metadata.target().starts_with("openraft") {
            tracing::subscriber::Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        if !Filter::event_enabled(&self.env, event, cx) {
            return false;
        }
        if self.chatter.show || !event.metadata().target().starts_with("openraft") {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !ConsensusChatter::is_chatter(event.metadata(), &message.0)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Filter::<S>::max_level_hint(&self.env)
    }

    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, cx: Context<'_, S>) {
        Filter::on_new_span(&self.env, attrs, id, cx)
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        Filter::on_enter(&self.env, id, cx)
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        Filter::on_exit(&self.env, id, cx)
    }

    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        Filter::on_close(&self.env, id, cx)
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, cx: Context<'_, S>) {
        Filter::on_record(&self.env, id, values, cx)
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the node's logger writes for openraft's chatter and for a line that matters.
    fn logged(show: bool) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone());
        let filter = ConsensusChatter { show }.and_env(EnvFilter::new(DEFAULT_DIRECTIVES));
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(layer, filter));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "openraft::replication", err = "timeout after 50ms when AppendEntries 1->2", "RPCError");
            tracing::warn!(target: "openraft::replication", error = "unreachable", "error replication to target={}", 2);
            tracing::error!(target: "openraft::core::raft_core", error = "timeout", "timeout");
            tracing::error!(target: "openraft::core::raft_core", error = "disk full", "quit RaftCore::main on error");
            tracing::debug!(target: "openraft::replication", "hidden by the directives anyway");
            tracing::info!(target: "falak_node::daemon", "node up");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn expected_consensus_chatter_is_kept_out_unless_debugging() {
        let quiet = logged(false);
        assert!(
            !quiet.contains("RPCError") && !quiet.contains("error replication") && !quiet.contains(" timeout"),
            "{quiet}"
        );
        assert!(quiet.contains("quit RaftCore::main on error"), "a real failure still shows: {quiet}");
        assert!(quiet.contains("node up"), "{quiet}");
        let debugging = logged(true);
        assert!(debugging.contains("RPCError") && debugging.contains("error replication to target=2"), "{debugging}");
    }
}
