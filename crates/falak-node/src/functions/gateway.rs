//! The invoke gateway: `/fn/{name}/{path}` on every node.
//!
//! Routing, in order: a ready local instance with a free slot (`warm`); a peer whose gossip
//! says it has free slots, through the invoke proxy (`remote-warm`); else a start where the
//! ranking below elects the node (a ready snapshot weighs most, then a prepared bundle, then
//! this node to save a hop) and that node claims an instance slot in the ledger, starts the
//! instance and serves the waiting request (`snapshot` or `cold`). When every slot of
//! `max_instances` is taken, the request waits on a node that has instances (429 with
//! Retry-After once the wait is over).
//!
//! The invoke proxy is HTTP from gateway to gateway (the peer's committed `api_url`) with
//! the `falak-hop` header: the receiving node serves locally and never forwards again, starting
//! an instance only when `falak-hop` says `start`. A peer that cannot be reached is skipped and
//! avoided for a few seconds; the next candidate serves the request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use falak_api::ApiError;
use falak_api::function::{Gateway, MAX_INVOKE_BODY_BYTES, START_HEADER, declared_length, drain, gateway_error};
use falak_core::NodeId;
use falak_core::function::FunctionSpec;
use falak_core::gossip::GossipState;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use http::header;

use super::deployment::to_host_request;
use super::start::{Stages, StartInfo, StartLabel};
use super::{FunctionHost, lock};
use crate::clock::instant;

/// The header that marks a request proxied from another node's gateway.
pub const HOP_HEADER: &str = "falak-hop";
/// How long a peer that could not be reached is passed over.
const AVOID_FOR: Duration = Duration::from_secs(3);

/// The gateway the API serves at `/fn/...`.
pub struct NodeGateway {
    host: Arc<FunctionHost>,
    http: reqwest::Client,
    avoid: Mutex<BTreeMap<NodeId, std::time::Instant>>,
}

impl NodeGateway {
    pub fn new(host: Arc<FunctionHost>) -> Arc<NodeGateway> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .tls_built_in_root_certs(false);
        // Peers' gateways are HTTPS with certificates from the mesh CA.
        match reqwest::Certificate::from_pem(host.ctx().ca_cert_pem.as_bytes()) {
            Ok(ca) => http = http.add_root_certificate(ca),
            Err(e) => {
                tracing::error!(error = %e, "the mesh CA certificate is unreadable; the invoke proxy cannot reach peers")
            }
        }
        // Fail closed: a client that cannot trust the mesh CA must not fall back to one that
        // trusts anything else; proxying then fails (and the request is served or started here).
        let http = http.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build the invoke proxy's HTTPS client");
            reqwest::Client::builder().tls_built_in_root_certs(false).https_only(true).build().unwrap_or_default()
        });
        Arc::new(NodeGateway { host, http, avoid: Mutex::new(BTreeMap::new()) })
    }

    fn avoided(&self, node: &NodeId) -> bool {
        let mut avoid = lock(&self.avoid);
        match avoid.get(node) {
            Some(until) if *until > instant() => true,
            Some(_) => {
                avoid.remove(node);
                false
            }
            None => false,
        }
    }

    fn avoid(&self, node: NodeId) {
        lock(&self.avoid).insert(node, instant() + AVOID_FOR);
    }

    async fn route(self: Arc<Self>, name: String, mut request: Request) -> Response {
        let t = instant();
        // The credentials that authorized this request stop here, on every path (served here,
        // started here, proxied): a function's code never sees a Falak token or a node's hop
        // credential, and only a request from another node may steer routing with `falak-hop`.
        let from_peer = request.extensions().get::<falak_api::Principal>().is_some_and(|p| p.hop);
        strip_credentials(request.headers_mut());
        if !from_peer {
            request.headers_mut().remove(HOP_HEADER);
        }
        // Only the version is read on the warm path; the spec is cloned when it is needed.
        let Some(version) = self.host.ctx().ledger.state().function(&name).map(|f| f.spec.version) else {
            return gateway_error(
                ApiError::not_found(format!("no function named {name}; deploy it with `falak fn deploy`")),
                None,
            );
        };
        if let Some(reason) = self.host.refused(&name) {
            return gateway_error(ApiError::new(falak_api::ErrorCode::Forbidden, reason), None);
        }
        if declared_length(request.headers()).is_some_and(|n| n > MAX_INVOKE_BODY_BYTES as u64) {
            drain(request.into_body(), MAX_INVOKE_BODY_BYTES).await;
            return too_large(&name);
        }
        let local = self.host.local(&name).filter(|d| d.spec.version == version);
        let hop = request.headers().get(HOP_HEADER).and_then(|v| v.to_str().ok()).map(|h| h.ends_with("start"));
        if let Some(d) = local.as_ref().filter(|d| hop.is_some() || d.free_slots() > 0) {
            // A proxied request is served here, never forwarded again.
            let mut route = Stages::default();
            if hop.is_none() {
                route.push("route", t.elapsed());
            }
            return d.serve(limited(request), hop.unwrap_or(false), route).await;
        }
        let Some(spec) = self.host.ctx().ledger.state().function(&name).map(|f| f.spec.clone()) else {
            return gateway_error(ApiError::not_found(format!("function {name} was just removed")), None);
        };
        if let Some(may_start) = hop {
            let d = self.host.deployment_for(&spec);
            return d.serve(limited(request), may_start, Stages::default()).await;
        }
        let peers = self.host.ctx().peers();
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, MAX_INVOKE_BODY_BYTES).await {
            Ok(b) => b,
            Err(_) => return too_large(&name),
        };
        // A ready instance on a peer.
        let mut warm: Vec<(u32, NodeId, String)> = peers
            .iter()
            .filter(|(id, _)| !self.avoided(id))
            .filter_map(|(id, g)| {
                let g = g.as_ref()?;
                let f = g.function(&name)?;
                (f.version == spec.version && f.free_slots > 0 && g.api_url.starts_with("https://"))
                    .then(|| (f.free_slots, *id, g.api_url.clone()))
            })
            .collect();
        warm.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        // A peer that turned out busy (its gossip was stale) answers 429 at once; keep that
        // answer in case nothing else can serve.
        let mut busy = None;
        for (_, node, url) in warm {
            let mut route = Stages::default();
            route.push("route", t.elapsed());
            match self.proxy((node, &url), &spec, &parts, body.clone(), false, route).await {
                Ok(response) if response.status() == http::StatusCode::TOO_MANY_REQUESTS => busy = Some(response),
                Ok(response) => return response,
                Err(ProxyError::Unreachable) => self.avoid(node),
                Err(ProxyError::Failed(response)) => return response,
            }
        }
        // Start an instance (or wait for one when every slot is taken).
        let slots_taken = self.host.ctx().ledger.state().function(&name).map_or(0, |f| f.instances.len() as u32);
        let at_limit = slots_taken >= spec.scaling.max_instances;
        let candidates = self.rank(&spec, &peers, at_limit);
        for (node, url) in candidates {
            let mut route = Stages::default();
            route.push("route", t.elapsed());
            if node == self.host.ctx().id {
                let d = self.host.deployment_for(&spec);
                let request = Request::from_parts(parts, Body::from(body));
                return d.serve(to_host_request(request), !at_limit, route).await;
            }
            match self.proxy((node, &url), &spec, &parts, body.clone(), !at_limit, route).await {
                Ok(response) => return response,
                Err(ProxyError::Unreachable) => self.avoid(node),
                Err(ProxyError::Failed(response)) => return response,
            }
        }
        if let Some(response) = busy {
            return response;
        }
        if at_limit {
            let max = spec.scaling.max_instances;
            return gateway_error(
                ApiError::too_many_requests(format!(
                    "function {name} is at its max_instances ({max}) and no reachable node has a free instance; retry after the time in Retry-After"
                )),
                Some(1000),
            );
        }
        gateway_error(
            ApiError::unavailable(format!("no node can run function {name} now (none healthy with its labels)")),
            Some(1000),
        )
    }

    /// The nodes to try for a start, best first: `(node, api_url)`; this node's url is empty.
    fn rank(
        &self,
        spec: &FunctionSpec,
        peers: &[(NodeId, Option<GossipState>)],
        at_limit: bool,
    ) -> Vec<(NodeId, String)> {
        let me = self.host.ctx().id;
        // Copy what is needed and let go of the ledger's lock before touching deployments.
        let fitting: std::collections::BTreeSet<NodeId> = {
            let state = self.host.ctx().ledger.state();
            state
                .nodes()
                .filter(|n| spec.labels.iter().all(|(k, v)| n.record.labels.get(k) == Some(v)))
                .map(|n| n.record.id)
                .collect()
        };
        let labels_ok = |id: &NodeId| fitting.contains(id);
        let local = self.host.local(&spec.name).filter(|d| d.spec.version == spec.version);
        let mut scored: Vec<(i64, NodeId, String)> = Vec::new();
        if labels_ok(&me) {
            let (snapshot, prepared, instances) =
                local.as_ref().map_or((false, false, 0), |d| (d.has_snapshot(), d.is_prepared(), d.instance_count()));
            scored.push((score(snapshot, prepared, instances, true, at_limit), me, String::new()));
        }
        for (id, gossip) in peers {
            if self.avoided(id) || !labels_ok(id) {
                continue;
            }
            let Some(g) = gossip else { continue };
            // Only HTTPS peers: the hop credential never travels in the clear.
            if !g.api_url.starts_with("https://") {
                continue;
            }
            let f = g.function(&spec.name).filter(|f| f.version == spec.version);
            let (snapshot, prepared, instances) =
                f.map_or((false, false, 0), |f| (f.snapshot, f.prepared, f.instances));
            scored.push((score(snapshot, prepared, instances, false, at_limit), *id, g.api_url.clone()));
        }
        if at_limit {
            // Only nodes with instances can serve; the others would be refused a slot.
            scored.retain(|(s, _, _)| *s >= AT_LIMIT_BONUS);
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, id, url)| (id, url)).collect()
    }

    /// Send the request to a peer's gateway (its id and committed API URL); an error means it
    /// could not be reached.
    async fn proxy(
        &self,
        (node, api_url): (NodeId, &str),
        spec: &FunctionSpec,
        parts: &http::request::Parts,
        body: bytes::Bytes,
        may_start: bool,
        route: Stages,
    ) -> Result<Response, ProxyError> {
        let (name, timeout_ms) = (spec.name.as_str(), spec.timeout_ms);
        let t = instant();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{api_url}/fn/{name}{path_and_query}");
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
        // The caller was authorized here; the peer trusts this node's credential instead, and
        // the caller's Falak token goes no further.
        let mut builder = self
            .http
            .request(method, &url)
            .header(falak_api::auth::HOP_HEADER_AUTH, self.host.ctx().hop_credential(node));
        for (key, value) in &parts.headers {
            // The caller's credentials were taken out on entry; its `falak-hop` never travels.
            if key == header::HOST || key == header::CONTENT_LENGTH || key == header::CONNECTION || key == HOP_HEADER {
                continue;
            }
            builder = builder.header(key.as_str(), value.as_bytes());
        }
        let hop = if may_start { format!("{}; start", self.host.ctx().id.short()) } else { self.host.ctx().id.short() };
        // The peer answers within the function's timeout (then its own 504), plus a margin.
        let limit = Duration::from_millis(timeout_ms.saturating_add(PROXY_MARGIN_MS));
        let response = match builder.header(HOP_HEADER, hop).timeout(limit).body(body).send().await {
            Ok(r) => r,
            // Nothing was sent: another node may serve the request.
            Err(e) if e.is_connect() => return Err(ProxyError::Unreachable),
            // The request may have reached the function: never run it a second time.
            Err(e) => {
                let message = if e.is_timeout() {
                    format!("the node serving function {name} did not answer within {} ms", limit.as_millis())
                } else {
                    format!("the node serving function {name} failed mid-request: {e}")
                };
                let error = if e.is_timeout() { ApiError::timeout(message) } else { ApiError::bad_gateway(message) };
                return Err(ProxyError::Failed(gateway_error(error, None)));
            }
        };
        let status = response.status().as_u16();
        let mut out = Response::builder().status(status);
        let mut start = None;
        for (key, value) in response.headers() {
            if key.as_str() == START_HEADER {
                start = value.to_str().ok().and_then(StartInfo::parse);
                continue;
            }
            if key == header::CONNECTION || key == header::TRANSFER_ENCODING {
                continue;
            }
            out = out.header(key.as_str(), value.as_bytes());
        }
        let proxied = t.elapsed();
        let mut info = start.unwrap_or(StartInfo { label: StartLabel::Warm, stages: Stages::default() });
        if info.label == StartLabel::Warm {
            info.label = StartLabel::RemoteWarm;
        }
        let remote: Duration = info.stages.0.iter().map(|(_, d)| *d).sum();
        info.stages.prepend(route);
        info.stages.push("proxy", proxied.saturating_sub(remote));
        self.host.ctx().metrics_observe(&info);
        out = out.header(START_HEADER, info.header());
        let stream = response.bytes_stream().map_err(|e| Box::new(e) as falak_function::BoxError);
        Ok(out.body(Body::from_stream(stream)).unwrap_or_else(|e| {
            gateway_error(ApiError::bad_gateway(format!("the peer's answer could not be relayed: {e}")), None)
        }))
    }
}

const AT_LIMIT_BONUS: i64 = 1000;
/// How much longer than the function's timeout the proxy waits for a peer's answer.
const PROXY_MARGIN_MS: u64 = 5_000;

/// Why the invoke proxy did not relay an answer.
enum ProxyError {
    /// The peer could not be reached; nothing was sent.
    Unreachable,
    /// The request was sent and then failed; this is the answer to give.
    Failed(Response),
}

/// A start candidate's score: a ready snapshot weighs most, then a prepared bundle, then being
/// this node (one hop less). When every slot is taken only nodes with instances qualify.
fn score(snapshot: bool, prepared: bool, instances: u32, is_self: bool, at_limit: bool) -> i64 {
    let mut s = 0;
    if snapshot {
        s += 100;
    }
    if prepared {
        s += 20;
    }
    if is_self {
        s += 5;
    }
    if at_limit && instances > 0 {
        s += AT_LIMIT_BONUS + i64::from(instances);
    }
    s
}

fn too_large(name: &str) -> Response {
    gateway_error(
        ApiError::too_large(format!(
            "the request body is larger than the gateway's limit of {MAX_INVOKE_BODY_BYTES} bytes for function {name}"
        )),
        None,
    )
}

/// The request with its body capped at the gateway's limit.
/// Take out what authorized a request: a Falak bearer token (another `Authorization` scheme,
/// the function's own, stays) and a node's hop credential.
fn strip_credentials(headers: &mut http::HeaderMap) {
    if falak_api::auth::bearer(headers).is_some_and(|t| t.is_ok()) {
        headers.remove(http::header::AUTHORIZATION);
    }
    headers.remove(falak_api::auth::HOP_HEADER_AUTH);
}

/// The request as an instance gets it: the body bounded (credentials were taken out on entry).
fn limited(request: Request) -> http::Request<falak_function::BoxBody> {
    use http_body_util::BodyExt;
    request.map(|body| {
        let body = super::deployment::SyncBody(std::sync::Mutex::new(body));
        http_body_util::Limited::new(body, MAX_INVOKE_BODY_BYTES).map_err(|e| e as falak_function::BoxError).boxed()
    })
}

/// What the API holds: a cheap handle on the node's gateway.
pub struct GatewayHandle(pub Arc<NodeGateway>);

impl Gateway for GatewayHandle {
    fn invoke(&self, name: String, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(self.0.clone().route(name, request))
    }
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn a_ready_snapshot_outweighs_everything_but_the_limit() {
        assert!(score(true, true, 0, false, false) > score(false, true, 0, true, false));
        assert!(score(false, true, 0, false, false) > score(false, false, 0, true, false));
        assert!(score(false, false, 1, false, true) > score(true, true, 0, true, true));
    }
}
