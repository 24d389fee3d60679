//! Node RPC for functions: each node answers for its own instances and logs; the node the
//! client asked gathers the answers of every healthy node.

use std::sync::Arc;

use falak_api::ApiError;
use falak_api::function::InstanceInfo;
use falak_core::NodeId;
use falak_transport::Protocol;
use serde::{Deserialize, Serialize};

use super::FunctionHost;

/// The function requests of the node RPC protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FunctionRpc {
    /// This node's instances of a function.
    Instances { function: String },
    /// The last `max_bytes` of this node's output of a function (every version it ran).
    Logs { function: String, max_bytes: usize },
}

impl FunctionHost {
    /// Answer one function RPC.
    pub async fn answer_rpc(self: &Arc<Self>, request: FunctionRpc) -> Result<bytes::Bytes, String> {
        match request {
            FunctionRpc::Instances { function } => {
                let instances = self.local_instances(&function).await;
                serde_json::to_vec(&instances).map(bytes::Bytes::from).map_err(|e| e.to_string())
            }
            FunctionRpc::Logs { function, max_bytes } => {
                // A peer's request is bounded like the API's: never more than the log limit.
                let max_bytes = max_bytes.min(falak_api::task::MAX_LOG_BYTES);
                Ok(bytes::Bytes::from(self.local_logs(&function, max_bytes).await))
            }
        }
    }

    async fn local_instances(&self, function: &str) -> Vec<InstanceInfo> {
        let mut instances = Vec::new();
        for d in self.all_deployments().into_iter().filter(|d| d.name() == function) {
            instances.extend(d.instances().await);
        }
        instances
    }

    async fn local_logs(&self, function: &str, max_bytes: usize) -> String {
        let dir = self.ctx().dir.join("deployments");
        let prefix = format!("{function}-");
        let function = function.to_owned();
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return String::new() };
            let mut versions: Vec<(u32, std::path::PathBuf)> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let version: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                    Some((version, e.path().join("log")))
                })
                .collect();
            versions.sort();
            let mut out = String::new();
            for (version, path) in versions {
                if let Ok(tail) = file_tail(&path, max_bytes)
                    && !tail.is_empty()
                {
                    out.push_str(&format!("--- {function} version {version}\n"));
                    out.push_str(&String::from_utf8_lossy(&tail));
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    }
}

/// Ask every healthy node (this one included) and gather the answers.
async fn gather(host: &Arc<FunctionHost>, request: FunctionRpc) -> Vec<(NodeId, Result<bytes::Bytes, String>)> {
    let me = host.ctx().id;
    let mut out = vec![(me, host.answer_rpc(request.clone()).await)];
    let body = match serde_json::to_vec(&crate::api::RpcRequest::Function(request)) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) => return vec![(me, Err(e.to_string()))],
    };
    let peers: Vec<NodeId> = host.ctx().peers().into_iter().map(|(id, _)| id).collect();
    let asks = peers.into_iter().map(|peer| {
        let transport = host.ctx().transport.clone();
        let body = body.clone();
        async move { (peer, transport.request(peer, Protocol::Rpc, body).await.map_err(|e| e.to_string())) }
    });
    out.extend(futures_util::future::join_all(asks).await);
    out
}

pub(crate) async fn gather_instances(host: &Arc<FunctionHost>, function: &str) -> Result<Vec<InstanceInfo>, ApiError> {
    if host.ctx().ledger.state().function(function).is_none() {
        return Err(ApiError::not_found(format!("no function named {function}")));
    }
    let mut all = Vec::new();
    for (node, answer) in gather(host, FunctionRpc::Instances { function: function.to_owned() }).await {
        match answer.and_then(|b| serde_json::from_slice::<Vec<InstanceInfo>>(&b).map_err(|e| e.to_string())) {
            Ok(list) => all.extend(list),
            Err(e) => tracing::debug!(node = %node.short(), error = %e, "no instance list from node"),
        }
    }
    all.sort_by(|a, b| (&a.node_name, a.instance).cmp(&(&b.node_name, b.instance)));
    Ok(all)
}

pub(crate) async fn gather_logs(
    host: &Arc<FunctionHost>,
    function: &str,
    max_bytes: usize,
) -> Result<String, ApiError> {
    if host.ctx().ledger.state().function(function).is_none() {
        return Err(ApiError::not_found(format!("no function named {function}")));
    }
    let names: std::collections::BTreeMap<NodeId, String> =
        host.ctx().ledger.state().nodes().map(|n| (n.record.id, n.record.name.clone())).collect();
    let mut out = String::new();
    for (node, answer) in gather(host, FunctionRpc::Logs { function: function.to_owned(), max_bytes }).await {
        let name = names.get(&node).cloned().unwrap_or_else(|| node.short());
        match answer {
            Ok(text) if !text.is_empty() => {
                out.push_str(&format!("=== node {name}\n"));
                out.push_str(&String::from_utf8_lossy(&text));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            Ok(_) => {}
            Err(e) => out.push_str(&format!("=== node {name}: no answer ({e})\n")),
        }
    }
    Ok(out)
}

/// The last `max` bytes of a file.
fn file_tail(path: &std::path::Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(max as u64)))?;
    let mut out = Vec::with_capacity(max.min(size as usize));
    file.take(max as u64).read_to_end(&mut out)?;
    Ok(out)
}
