//! `cluster.yaml`: a local mesh described in one file (seed 001's `cluster-config.yaml`).
//!
//! ```yaml
//! name: demo                 # mesh name (`swarm` is accepted too)
//! nodes:
//!   count: 3                 # or `list:` with one entry per node
//!   list:
//!     - { name: edge-a, labels: { zone: a }, capacity: { cpu: 1, memory: 1Gi }, cost_per_hour: 0.2 }
//! ports: { api: 7070, transport: 7170, gossip: 7270 }   # node i uses base + i; 0 = pick free ports
//! data_dir: .falak
//! cleanup: false             # remove the data dir when `falak up` stops
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use falak_core::spec::{SpecError, from_yaml, validate_name};
use serde::{Deserialize, Serialize};

use crate::config::CapacityDocument;

/// The most nodes `falak up` starts on one machine.
pub const MAX_LOCAL_NODES: u32 = 64;

/// The embedded default: three nodes, fixed ports from 7070, data under `.falak`.
pub const DEFAULT_CLUSTER: &str = "name: local\nnodes: { count: 3 }\nports: { api: 7070, transport: 7170, gossip: 7270 }\ndata_dir: .falak\ncleanup: false\n";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDocument {
    #[serde(alias = "swarm")]
    pub name: String,
    pub nodes: NodesDocument,
    #[serde(default)]
    pub ports: Option<PortsDocument>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub cleanup: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesDocument {
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub list: Vec<LocalNodeDocument>,
    /// Seed 001's name for the base HTTP port.
    #[serde(default, rename = "httpPort")]
    pub http_port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalNodeDocument {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: Option<CapacityDocument>,
    #[serde(default)]
    pub cost_per_hour: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsDocument {
    pub api: u16,
    pub transport: u16,
    pub gossip: u16,
}

/// A validated local mesh plan.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    pub nodes: Vec<LocalNodeDocument>,
    /// `None`: pick free ports.
    pub ports: Option<PortsDocument>,
    pub data_dir: PathBuf,
    pub cleanup: bool,
}

impl ClusterDocument {
    pub fn parse(text: &str) -> Result<ClusterPlan, SpecError> {
        let doc: ClusterDocument = from_yaml(text)?;
        doc.validate()
    }

    pub fn load(path: &Path) -> Result<ClusterPlan, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    fn validate(self) -> Result<ClusterPlan, SpecError> {
        validate_name("name", &self.name)?;
        let mut nodes = self.nodes.list;
        match (self.nodes.count, nodes.len()) {
            (Some(0), _) => return Err(SpecError::new("nodes.count", "a mesh needs at least one node")),
            (Some(n), 0) => nodes = vec![LocalNodeDocument::default(); n as usize],
            (Some(n), len) if n as usize != len => {
                return Err(SpecError::new("nodes.count", format!("says {n} but nodes.list has {len} entries")));
            }
            (None, 0) => return Err(SpecError::new("nodes", "give `count` or a `list` of nodes")),
            _ => {}
        }
        if nodes.len() > MAX_LOCAL_NODES as usize {
            return Err(SpecError::new("nodes", format!("at most {MAX_LOCAL_NODES} local nodes")));
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            let name = node.name.get_or_insert_with(|| format!("node-{}", i + 1));
            validate_name(&format!("nodes.list[{i}].name"), name)?;
        }
        let mut names: Vec<&String> = nodes.iter().filter_map(|n| n.name.as_ref()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(SpecError::new("nodes.list", format!("node name {} appears twice", w[0])));
        }
        let ports = match (self.ports, self.nodes.http_port) {
            (Some(p), _) if p.api == 0 => None,
            (Some(p), _) => Some(p),
            (None, Some(http)) => {
                Some(PortsDocument { api: http, transport: http.saturating_add(100), gossip: http.saturating_add(200) })
            }
            (None, None) => None,
        };
        if let Some(p) = ports {
            let n = nodes.len() as u32;
            for (field, base) in [("ports.api", p.api), ("ports.transport", p.transport), ("ports.gossip", p.gossip)] {
                if u32::from(base) + n > 65535 {
                    return Err(SpecError::new(field, format!("{base} + {n} nodes runs past port 65535")));
                }
            }
        }
        Ok(ClusterPlan {
            name: self.name,
            nodes,
            ports,
            data_dir: self.data_dir.unwrap_or_else(|| ".falak".into()),
            cleanup: self.cleanup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_three_nodes() {
        let plan = ClusterDocument::parse(DEFAULT_CLUSTER).unwrap();
        assert_eq!(plan.nodes.len(), 3);
        assert_eq!(plan.nodes[2].name.as_deref(), Some("node-3"));
        assert_eq!(plan.ports.unwrap().api, 7070);
    }

    #[test]
    fn seed_001_shape_is_accepted() {
        let plan =
            ClusterDocument::parse("swarm: test-name\nnodes:\n  count: 4\n  httpPort: 8080\ncleanup: true").unwrap();
        assert_eq!(plan.name, "test-name");
        assert_eq!(plan.nodes.len(), 4);
        assert_eq!(plan.ports.unwrap().api, 8080);
        assert!(plan.cleanup);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ClusterDocument::parse("name: x\nnodes: { count: 2, list: [{name: a}] }").unwrap_err();
        assert_eq!(e.field, "nodes.count");
        let e = ClusterDocument::parse("name: x\nnodes: { list: [{name: a}, {name: a}] }").unwrap_err();
        assert!(e.message.contains("twice"));
        let e = ClusterDocument::parse("name: x\nnodes: { count: 1 }\nflavour: mint").unwrap_err();
        assert!(e.message.contains("unknown field `flavour`"));
    }
}
