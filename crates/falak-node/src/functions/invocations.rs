//! Asynchronous invocations: recorded in the ledger, run by their owner node through the same
//! gateway routing as synchronous ones, retried per the invocation's `max_attempts`, the result
//! stored in the ledger and optionally POSTed to a callback URL. When the owner goes OFFLINE the
//! ledger hands its pending invocations to another node, which runs them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use falak_api::ApiError;
use falak_api::function::{InvocationInfo, InvocationSubmission};
use falak_core::function::{InvocationId, InvocationState, MAX_ASYNC_RESULT_BYTES, StoredRequest, StoredResponse};
use falak_core::ledger::{Command, Outcome};

use super::{FunctionHost, lock};
use crate::clock::now_millis;

/// Default attempts of an asynchronous invocation.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// Invocations this node is running now.
#[derive(Default)]
pub(crate) struct Running(Mutex<BTreeSet<InvocationId>>);

impl Running {
    fn begin(&self, id: InvocationId) -> bool {
        lock(&self.0).insert(id)
    }

    fn end(&self, id: InvocationId) {
        lock(&self.0).remove(&id);
    }
}

pub(crate) async fn submit(
    host: &Arc<FunctionHost>,
    name: &str,
    submission: &InvocationSubmission,
    key: Option<&falak_core::ledger::IdempotencyKey>,
) -> Result<InvocationInfo, ApiError> {
    let request = submission.stored_request()?;
    // What was asked: the function and the whole request, callback and attempts.
    let asked = falak_core::ledger::RequestFingerprint::of(
        "invoke_async",
        &(name, &request, &submission.callback, submission.max_attempts),
    );
    let command = Command::SubmitInvocation {
        function: name.to_owned(),
        request,
        callback: submission.callback.clone(),
        max_attempts: submission.max_attempts.unwrap_or(DEFAULT_ATTEMPTS),
        owner: host.ctx().id,
        now: now_millis(),
    };
    let id = match host.write(crate::api::keyed(command, key, asked), key).await? {
        Outcome::InvocationSubmitted { id } => id,
        other => return Err(ApiError::internal(format!("unexpected ledger outcome {other:?}"))),
    };
    run_owned(host);
    let state = host.ctx().ledger.state();
    state.invocation(id).map(InvocationInfo::of).ok_or_else(|| ApiError::internal("the invocation vanished"))
}

/// Start every pending invocation this node owns that is not running yet.
pub(crate) fn run_owned(host: &Arc<FunctionHost>) {
    let me = host.ctx().id;
    let pending: Vec<_> = host
        .ctx()
        .ledger
        .state()
        .invocations()
        .filter(|i| i.owner == me && i.state == InvocationState::Pending)
        .map(|i| (i.id, i.function.clone(), i.request.clone(), i.callback.clone(), i.max_attempts))
        .collect();
    for (id, function, request, callback, max_attempts) in pending {
        if !host.invocations.begin(id) {
            continue;
        }
        let host = host.clone();
        tokio::spawn(async move {
            run_one(&host, id, &function, request, callback, max_attempts).await;
            host.invocations.end(id);
        });
    }
}

async fn run_one(
    host: &Arc<FunctionHost>,
    id: InvocationId,
    function: &str,
    request: StoredRequest,
    callback: Option<String>,
    max_attempts: u32,
) {
    let mut attempts = 0;
    let mut last: (Option<StoredResponse>, Option<String>) = (None, None);
    while attempts < max_attempts {
        attempts += 1;
        last = match invoke_once(host, function, &request).await {
            Ok(response) => (Some(response), None),
            Err(e) => (None, Some(e)),
        };
        let retry = match &last {
            (Some(r), _) => r.status >= 500 || r.status == 429,
            (None, _) => true,
        };
        // The function was removed meanwhile: no attempt can succeed.
        if host.ctx().ledger.state().function(function).is_none() {
            last.1.get_or_insert_with(|| format!("function {function} was removed"));
            break;
        }
        if !retry {
            break;
        }
        if attempts < max_attempts {
            tokio::time::sleep(Duration::from_millis(250 << attempts.min(6))).await;
        }
    }
    let (response, error) = last;
    let command = Command::FinishInvocation { id, node: host.ctx().id, attempts, response, error, now: now_millis() };
    // Recording the result is retried: dropping it would run the invocation again.
    let mut recorded = None;
    for attempt in 0..6u32 {
        match host.ctx().ledger.write(command.clone()).await {
            Ok(applied) => {
                recorded = Some(applied);
                break;
            }
            Err(e) => {
                tracing::debug!(invocation = id, error = %e, attempt, "result not recorded yet");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
    match recorded {
        Some(applied) => {
            if let Outcome::InvocationFinished { .. } = applied.outcome
                && let Some(url) = callback
            {
                let info = host.ctx().ledger.state().invocation(id).map(InvocationInfo::of);
                if let Some(info) = info {
                    post_callback(&url, &info).await;
                }
            }
        }
        None => tracing::warn!(invocation = id, "result not recorded; the invocation runs again"),
    }
}

/// One attempt through the node's own gateway (the same routing as `/fn/{name}`).
async fn invoke_once(
    host: &Arc<FunctionHost>,
    function: &str,
    request: &StoredRequest,
) -> Result<StoredResponse, String> {
    let api_url = host.api_url();
    let query = if request.query.is_empty() { String::new() } else { format!("?{}", request.query) };
    let url = format!("{api_url}/fn/{function}{}{query}", request.path);
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
    // The gateway answers within the function's timeout (504 after it); a margin on top.
    let timeout_ms = host.ctx().ledger.state().function(function).map_or(60_000, |f| f.spec.timeout_ms);
    let client = falak_api::client::http_client(Some(&host.ctx().ca_cert_pem)).map_err(|e| e.to_string())?;
    let mut builder = client
        .request(method, &url)
        .header(falak_api::auth::HOP_HEADER_AUTH, host.ctx().hop_credential(host.ctx().id))
        .timeout(Duration::from_millis(timeout_ms.saturating_add(30_000)));
    for (k, v) in &request.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut response = builder.body(request.body.clone()).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    // Keep at most the stored limit; read no further than that.
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        let room = MAX_ASYNC_RESULT_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(StoredResponse { status, headers, body, truncated })
}

async fn post_callback(url: &str, info: &InvocationInfo) {
    let client = reqwest::Client::new();
    for attempt in 0..3u32 {
        match client.post(url).json(info).timeout(Duration::from_secs(10)).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(%url, status = %r.status(), "callback refused"),
            Err(e) => tracing::warn!(%url, error = %e, "callback failed"),
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
    }
}
