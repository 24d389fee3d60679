//! Start labels and stage timings: how an invocation got its instance, and what each stage took.
//!
//! Every gateway response carries them in the `falak-start` header, e.g.
//! `snapshot; route=0.02; claim=3.10; fork=2.41; first_byte=0.85` (milliseconds), and the
//! node's metrics keep a histogram per label and per stage.

use std::time::Duration;

/// How an invocation got its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StartLabel {
    /// A ready instance on the node that received the request.
    Warm,
    /// A ready instance on another node, through the invoke proxy.
    RemoteWarm,
    /// A new instance forked from a ready snapshot (zygote).
    Snapshot,
    /// A new instance started from nothing (or a snapshot built for it).
    Cold,
}

impl StartLabel {
    pub const ALL: [StartLabel; 4] = [StartLabel::Warm, StartLabel::RemoteWarm, StartLabel::Snapshot, StartLabel::Cold];

    pub fn name(self) -> &'static str {
        match self {
            StartLabel::Warm => "warm",
            StartLabel::RemoteWarm => "remote-warm",
            StartLabel::Snapshot => "snapshot",
            StartLabel::Cold => "cold",
        }
    }

    pub fn parse(text: &str) -> Option<StartLabel> {
        StartLabel::ALL.into_iter().find(|l| l.name() == text)
    }
}

/// Named stage durations, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stages(pub Vec<(&'static str, Duration)>);

impl Stages {
    pub fn push(&mut self, stage: &'static str, took: Duration) {
        self.0.push((stage, took));
    }

    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, took)| *took).sum()
    }

    pub fn extend(&mut self, other: Stages) {
        self.0.extend(other.0);
    }

    pub fn prepend(&mut self, mut before: Stages) {
        before.0.append(&mut self.0);
        self.0 = before.0;
    }
}

/// An invocation's start label and stages.
#[derive(Debug, Clone, PartialEq)]
pub struct StartInfo {
    pub label: StartLabel,
    pub stages: Stages,
}

/// Stage names that may appear; a remote node's header is parsed back only with these.
pub const STAGES: [&str; 11] =
    ["route", "proxy", "queue", "claim", "fetch", "prepare", "snapshot", "fork", "spawn", "init", "first_byte"];

impl StartInfo {
    pub fn warm(route: Stages) -> StartInfo {
        StartInfo { label: StartLabel::Warm, stages: route }
    }

    /// The `falak-start` header value.
    pub fn header(&self) -> String {
        let mut out = self.label.name().to_owned();
        for (stage, took) in &self.stages.0 {
            out.push_str(&format!("; {stage}={:.3}", took.as_secs_f64() * 1000.0));
        }
        out
    }

    /// Parse a `falak-start` header (from a peer, for the invoke proxy).
    pub fn parse(header: &str) -> Option<StartInfo> {
        let mut parts = header.split(';').map(str::trim);
        let label = StartLabel::parse(parts.next()?)?;
        let mut stages = Stages::default();
        for part in parts {
            let (name, ms) = part.split_once('=')?;
            let stage = STAGES.into_iter().find(|s| *s == name)?;
            let ms: f64 = ms.parse().ok()?;
            if !(0.0..1e9).contains(&ms) {
                return None;
            }
            stages.push(stage, Duration::from_secs_f64(ms / 1000.0));
        }
        Some(StartInfo { label, stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut stages = Stages::default();
        stages.push("route", Duration::from_micros(20));
        stages.push("fork", Duration::from_micros(2410));
        let info = StartInfo { label: StartLabel::Snapshot, stages };
        assert_eq!(info.header(), "snapshot; route=0.020; fork=2.410");
        let back = StartInfo::parse(&info.header()).unwrap();
        assert_eq!(back.label, StartLabel::Snapshot);
        assert_eq!(back.stages.0.len(), 2);
        assert!(StartInfo::parse("hot; x=1").is_none());
        assert!(StartInfo::parse("warm; evil=1").is_none());
    }
}
