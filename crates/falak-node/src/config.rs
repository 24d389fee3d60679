//! Node configuration: a YAML file plus command-line overrides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use falak_core::resources::{Quantity, Resources, parse_cpu, parse_memory};
use falak_core::spec::{SpecError, from_yaml};
use serde::{Deserialize, Serialize};

/// The shortest `disk_check_interval` accepted.
pub const MIN_DISK_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// The longest `disk_check_interval` accepted.
pub const MAX_DISK_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The node config file as written (`falak node -c node.yaml`). Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfigDocument {
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    pub api_addr: Option<SocketAddr>,
    /// QUIC listen address for node-to-node protocols.
    pub transport_addr: Option<SocketAddr>,
    /// UDP listen address for membership.
    pub gossip_addr: Option<SocketAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the capacity detected from the host.
    pub capacity: Option<CapacityDocument>,
    pub cost_per_hour: Option<f64>,
    /// Membership addresses to join through besides those in the mesh files.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// How long a won claim lasts without renewal, e.g. `5s`.
    pub lease: Option<String>,
    /// Run every task as this uid:gid when the node runs as root, instead of a uid of each
    /// capsule's own from `workload_uids`.
    pub run_as: Option<String>,
    /// The uids workloads get, one per capsule and per function: `FIRST-LAST` (default
    /// `600000-665535`). The workload runs as its uid when the node is root, and has it inside
    /// its user namespace (mapped to the node's uid) when the node is not.
    pub workload_uids: Option<String>,
    /// Directories no workload may see besides the node's data dir and home (`falak up`
    /// adds the mesh dir, which holds the admin credentials).
    #[serde(default)]
    pub hidden_from_workloads: Vec<PathBuf>,
    /// `fast` (default: a crashed node is OFFLINE everywhere in about 1.3 s; pauses up to
    /// 1.25 s go unreported) or `pause-tolerant` (about 1.8 s; pauses up to 1.75 s).
    pub failure_detection: Option<FailureDetection>,
    /// Free space kept on the data dir's filesystem for the ledger, e.g. `2Gi`; under it the
    /// node takes no new work and stops the task growing most. Default: 1 GiB or 5% of the
    /// filesystem, whichever is smaller.
    pub disk_reserve: Option<Quantity>,
    /// How often each task attempt's working directory is measured against its disk limit,
    /// e.g. `250ms` (the default).
    pub disk_check_interval: Option<String>,
    /// Registries this node reaches over plain HTTP, as `host:port` (e.g. a local
    /// `127.0.0.1:5000`); every other registry only over HTTPS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Credentials by registry `host:port`: `{ username, password }` (basic auth, or the
    /// credentials a token service asks for).
    #[serde(default)]
    pub registry_auth: BTreeMap<String, falak_image::RegistryAuth>,
    /// The OCI runtime `kind: container` capsules run with: `runc` (the default), `crun`, or a
    /// path to either. A node where it is missing runs no containers and says so at start.
    pub container_runtime: Option<String>,
}

/// The membership timing preset (`docs/design/membership.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureDetection {
    #[default]
    Fast,
    PauseTolerant,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityDocument {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
    pub gpus: Option<u32>,
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    pub transport_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub cost_per_hour: f64,
    pub seeds: Vec<SocketAddr>,
    pub lease: Duration,
    pub run_as: Option<(u32, u32)>,
    /// `(first, count)`.
    pub workload_uids: (u32, u32),
    pub hidden_from_workloads: Vec<PathBuf>,
    pub failure_detection: FailureDetection,
    /// Bytes kept free on the data dir's filesystem; `None` means the default, worked out from
    /// the filesystem's size when the node starts (`falak_exec::DiskReserve::default_bytes`).
    pub disk_reserve: Option<u64>,
    pub disk_check_interval: Duration,
    pub insecure_registries: Vec<String>,
    pub registry_auth: BTreeMap<String, falak_image::RegistryAuth>,
    pub container_runtime: String,
}

/// Why a node config is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LoadConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {error}")]
    Invalid { path: PathBuf, error: SpecError },
    #[error("{0}")]
    Value(SpecError),
}

impl NodeConfig {
    /// What this node declares about itself in the ledger, reachable at `api_url`; the daemon
    /// adds the namespaces it found at start (a join sends the record without them).
    pub fn record(&self, id: falak_core::NodeId, api_url: String) -> falak_core::node::NodeRecord {
        falak_core::node::NodeRecord {
            id,
            name: self.name.clone(),
            labels: self.labels.clone(),
            capacity: self.capacity,
            cost_per_hour: self.cost_per_hour,
            transport_addr: self.transport_addr.to_string(),
            gossip_addr: self.gossip_addr.to_string(),
            api_url,
            namespaces: None,
        }
    }
}

impl NodeConfigDocument {
    pub fn load(path: &Path) -> Result<Self, LoadConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadConfigError::Read { path: path.into(), source })?;
        from_yaml(&text).map_err(|error| LoadConfigError::Invalid { path: path.into(), error })
    }

    /// Fill defaults and check values. `detected` is the host's capacity.
    pub fn resolve(self, detected: Resources) -> Result<NodeConfig, LoadConfigError> {
        let err = |field: &str, msg: String| LoadConfigError::Value(SpecError::new(field, msg));
        let name = self.name.unwrap_or_else(|| "node".to_owned());
        falak_core::spec::validate_name("name", &name).map_err(LoadConfigError::Value)?;
        let mut capacity = detected;
        if let Some(c) = &self.capacity {
            if let Some(q) = &c.cpu {
                capacity.cpu_millis = parse_cpu(&q.as_text()).map_err(|e| err("capacity.cpu", e.to_string()))?;
            }
            if let Some(q) = &c.memory {
                capacity.memory_bytes =
                    parse_memory(&q.as_text()).map_err(|e| err("capacity.memory", e.to_string()))?;
            }
            if let Some(g) = c.gpus {
                capacity.gpus = g;
            }
        }
        let cost_per_hour = self.cost_per_hour.unwrap_or(0.0);
        if !cost_per_hour.is_finite() || cost_per_hour < 0.0 {
            return Err(err("cost_per_hour", format!("must be zero or more, got {cost_per_hour}")));
        }
        let lease = match &self.lease {
            None => Duration::from_secs(5),
            Some(text) => falak_core::capsule::parse_duration("lease", text).map_err(LoadConfigError::Value)?,
        };
        if lease < Duration::from_millis(500) {
            return Err(err("lease", "must be at least 500ms".into()));
        }
        let run_as = match &self.run_as {
            None => None,
            Some(text) => {
                let parsed = text.split_once(':').and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
                Some(parsed.ok_or_else(|| err("run_as", format!("{text:?} is not uid:gid, e.g. 65534:65534")))?)
            }
        };
        let workload_uids = match &self.workload_uids {
            None => falak_exec::WorkloadUsers::DEFAULT_RANGE,
            Some(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
                    .filter(|(first, last)| first <= last && *first > 0);
                let (first, last) = parsed.ok_or_else(|| {
                    err(
                        "workload_uids",
                        format!("{text:?} is not a range FIRST-LAST of uids above 0, e.g. 600000-665535"),
                    )
                })?;
                (first, last - first + 1)
            }
        };
        let disk_reserve = match &self.disk_reserve {
            None => None,
            Some(q) => Some(parse_memory(&q.as_text()).map_err(|e| err("disk_reserve", e.to_string()))?),
        };
        let disk_check_interval = match &self.disk_check_interval {
            None => falak_exec::disk::DEFAULT_CHECK_EVERY,
            Some(text) => {
                falak_core::capsule::parse_duration("disk_check_interval", text).map_err(LoadConfigError::Value)?
            }
        };
        if !(MIN_DISK_CHECK_INTERVAL..=MAX_DISK_CHECK_INTERVAL).contains(&disk_check_interval) {
            return Err(err(
                "disk_check_interval",
                format!(
                    "must be between {}ms and {}s: shorter walks the task dirs too often, longer lets a task \
                     write far past its limit",
                    MIN_DISK_CHECK_INTERVAL.as_millis(),
                    MAX_DISK_CHECK_INTERVAL.as_secs()
                ),
            ));
        }
        for registry in self.insecure_registries.iter().chain(self.registry_auth.keys()) {
            if registry.is_empty() || registry.contains("://") || registry.contains('/') {
                return Err(err(
                    "insecure_registries",
                    format!(
                        "{registry:?} is not a registry host; write `host:port`, e.g. `127.0.0.1:5000`, without a scheme or path"
                    ),
                ));
            }
        }
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(NodeConfig {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(format!(".falak/{name}"))),
            name,
            api_addr: self.api_addr.unwrap_or(local(7070)),
            transport_addr: self.transport_addr.unwrap_or(local(7080)),
            gossip_addr: self.gossip_addr.unwrap_or(local(7090)),
            labels: self.labels,
            capacity,
            cost_per_hour,
            seeds: self.seeds,
            lease,
            run_as,
            workload_uids,
            hidden_from_workloads: self.hidden_from_workloads,
            failure_detection: self.failure_detection.unwrap_or_default(),
            disk_reserve,
            disk_check_interval,
            insecure_registries: self.insecure_registries,
            registry_auth: self.registry_auth,
            container_runtime: self.container_runtime.unwrap_or_else(|| "runc".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let doc: NodeConfigDocument =
            from_yaml("name: edge-1\nlabels: { zone: a }\ncapacity: { cpu: 2, memory: 1Gi }\nlease: 3s").unwrap();
        let cfg = doc.resolve(Resources::new(8000, 16 << 30)).unwrap();
        assert_eq!(cfg.capacity, Resources::new(2000, 1 << 30));
        assert_eq!(cfg.lease, Duration::from_secs(3));
        assert_eq!(cfg.data_dir, PathBuf::from(".falak/edge-1"));
        assert_eq!(cfg.workload_uids, (600_000, 65_536));
        assert_eq!((cfg.disk_reserve, cfg.disk_check_interval), (None, Duration::from_millis(250)));
        let doc: NodeConfigDocument = from_yaml("disk_reserve: 2Gi\ndisk_check_interval: 500ms").unwrap();
        let cfg = doc.resolve(Resources::ZERO).unwrap();
        assert_eq!((cfg.disk_reserve, cfg.disk_check_interval), (Some(2 << 30), Duration::from_millis(500)));
    }

    #[test]
    fn registries_are_hosts_and_credentials_are_never_printed() {
        let doc: NodeConfigDocument = from_yaml(
            "insecure_registries: [\"127.0.0.1:5000\"]\nregistry_auth: { \"ghcr.io\": { username: me, password: hunter2 } }",
        )
        .unwrap();
        let cfg = doc.resolve(Resources::ZERO).unwrap();
        assert_eq!(cfg.insecure_registries, ["127.0.0.1:5000"]);
        assert_eq!(cfg.registry_auth["ghcr.io"].username, "me");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let bad = from_yaml::<NodeConfigDocument>("insecure_registries: [\"http://127.0.0.1:5000\"]").unwrap();
        let error = bad.resolve(Resources::ZERO).unwrap_err().to_string();
        assert!(
            error.starts_with("field `insecure_registries`: \"http://127.0.0.1:5000\" is not a registry host"),
            "{error}"
        );
    }

    #[test]
    fn bad_disk_settings_name_the_field() {
        let error = |text: &str| {
            from_yaml::<NodeConfigDocument>(text).unwrap().resolve(Resources::ZERO).unwrap_err().to_string()
        };
        assert_eq!(
            error("disk_reserve: plenty"),
            r#"field `disk_reserve`: "plenty" is not a quantity; write e.g. `32Mi`, `1Gi` or `512M`"#
        );
        assert_eq!(
            error("disk_check_interval: 1ms"),
            "field `disk_check_interval`: must be between 50ms and 10s: shorter walks the task dirs too often, \
             longer lets a task write far past its limit"
        );
        assert_eq!(
            error("disk_check_interval: often"),
            r#"field `disk_check_interval`: "often" is not a duration (expected number at 0); write e.g. `30s` or `5m`"#
        );
    }

    #[test]
    fn workload_uids_are_a_range() {
        let doc: NodeConfigDocument = from_yaml("workload_uids: 1000-1009").unwrap();
        assert_eq!(doc.resolve(Resources::new(1000, 1 << 30)).unwrap().workload_uids, (1000, 10));
        for bad in ["10-1", "x", "0-5", "5"] {
            let doc: NodeConfigDocument = from_yaml(&format!("workload_uids: \"{bad}\"")).unwrap();
            let error = doc.resolve(Resources::new(1000, 1 << 30)).unwrap_err().to_string();
            assert!(error.contains("workload_uids") && error.contains("FIRST-LAST"), "{bad}: {error}");
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let doc: NodeConfigDocument = from_yaml("capacity: { cpu: -2 }").unwrap();
        let e = doc.resolve(Resources::ZERO).unwrap_err().to_string();
        assert!(e.starts_with("field `capacity.cpu`"), "{e}");
        let e = from_yaml::<NodeConfigDocument>("colour: blue").unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = from_yaml::<NodeConfigDocument>("failure_detection: instant").unwrap_err().to_string();
        assert!(e.contains("failure_detection") && e.contains("pause-tolerant"), "{e}");
        let doc: NodeConfigDocument = from_yaml("failure_detection: pause-tolerant").unwrap();
        assert_eq!(doc.resolve(Resources::ZERO).unwrap().failure_detection, FailureDetection::PauseTolerant);
    }
}
