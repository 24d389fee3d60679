//! A fake node for API tests: it answers actions from a real `falak_core` ledger state that it
//! applies commands to directly (no Raft, no executor), and serves the router on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use falak_api::capsule::{CapsuleApplied, CapsuleInfo, CapsuleSummary};
use falak_api::event::{EventSource, EventStart};
use falak_api::health::Readiness;
use falak_api::job::JobInfo;
use falak_api::node::{NodeInfo, NodeLive};
use falak_api::service::ServiceInfo;
use falak_api::task::{DecisionInfo, TaskInfo};
use falak_api::workload::WorkloadInfo;
use falak_api::{Action, ApiConfig, ApiError, Client, EventItem, EventRecord, EventSubscription};
use falak_core::job::{TaskId, TaskReport};
use falak_core::ledger::{Command, EventId, Outcome, State};
use falak_core::node::NodeRecord;
use falak_core::placement::{Decision, Health, Ranking, Strategy};
use falak_core::resources::Resources;
use falak_core::{Millis, NodeId};
use tokio::sync::{broadcast, mpsc};

pub fn node_id(n: u8) -> NodeId {
    NodeId([n; 32])
}

/// The fake's state, shared between its action loop and the test.
pub struct FakeNode {
    pub state: State,
    pub now: Millis,
    pub me: NodeId,
    pub ready: bool,
    /// Ledger events so far, each under its own log index (`index.0`).
    history: Vec<EventRecord>,
    /// Live items (ledger events, observations, notices) for following subscribers.
    bus: broadcast::Sender<EventItem>,
    /// The idempotency key of the last submit, as the node received it.
    pub last_key: Option<falak_core::ledger::IdempotencyKey>,
}

/// Items the fake's live channel holds per subscriber.
pub const EVENT_CAPACITY: usize = 16;

impl FakeNode {
    fn new() -> FakeNode {
        let (bus, _) = broadcast::channel(EVENT_CAPACITY);
        let mut fake = FakeNode {
            state: State::default(),
            now: 1_000,
            me: node_id(1),
            ready: true,
            history: vec![],
            bus,
            last_key: None,
        };
        fake.state.apply(&falak_core::signing::deployer_for_tests().1);
        fake.admit(1, "node-a", Resources::new(4000, 8 << 30), &[("zone", "a")]);
        fake.admit(2, "node-b", Resources::new(1000, 1 << 30), &[("zone", "b")]);
        fake
    }

    fn admit(&mut self, n: u8, name: &str, capacity: Resources, labels: &[(&str, &str)]) {
        let record = NodeRecord {
            id: node_id(n),
            name: name.to_owned(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            capacity,
            cost_per_hour: f64::from(n),
            transport_addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
            gossip_addr: format!("127.0.0.1:{}", 7100 + u16::from(n)),
            api_url: format!("http://127.0.0.1:{}", 7200 + u16::from(n)),
            namespaces: None,
        };
        self.write(|now| Command::AdmitNode { record, now }).unwrap();
    }

    /// Apply one command as if the ledger committed it; publish its events.
    pub fn write(&mut self, command: impl FnOnce(Millis) -> Command) -> Result<Outcome, ApiError> {
        self.now += 10;
        let applied = self.state.apply(&command(self.now));
        for event in &applied.events {
            let data = serde_json::to_value(event).unwrap();
            let kind = data["type"].as_str().unwrap_or("ledger").to_owned();
            self.publish(&kind, data);
        }
        match applied.outcome {
            Outcome::Rejected(rejection) => Err(rejection.into()),
            outcome => Ok(outcome),
        }
    }

    /// Publish a ledger event at the next log index.
    pub fn publish(&mut self, kind: &str, data: serde_json::Value) {
        let index = self.history.len() as u64 + 1;
        let record = EventRecord {
            id: Some(EventId::new(index, 0)),
            source: EventSource::Ledger,
            node: None,
            at_ms: self.now,
            kind: kind.to_owned(),
            data,
        };
        self.history.push(record.clone());
        let _ = self.bus.send(EventItem::Event(record));
    }

    /// Send a live item that is not a ledger event (an observation, a notice).
    pub fn send_live(&mut self, item: EventItem) {
        let _ = self.bus.send(item);
    }

    /// What a node's feed does, in small: the history after `start`, then live items.
    fn subscribe(&self, start: EventStart, follow: bool) -> EventSubscription {
        let after = match start {
            EventStart::After(id) => id,
            EventStart::Recent(count) => {
                let skip = self.history.len().saturating_sub(count as usize);
                self.history.get(skip.wrapping_sub(1)).and_then(|r| r.id).unwrap_or_default()
            }
        };
        let history: Vec<EventRecord> =
            self.history.iter().filter(|r| r.id.is_some_and(|id| id > after)).cloned().collect();
        let mut live = self.bus.subscribe();
        let (tx, items) = mpsc::channel(64);
        tokio::spawn(async move {
            for record in history {
                if tx.send(EventItem::Event(record)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let item = match live.recv().await {
                    Ok(item) => item,
                    Err(broadcast::error::RecvError::Lagged(missed)) => EventItem::Lagged { missed },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        EventSubscription { items }
    }

    /// What placement computes now for a task, the way a node would.
    pub fn ranking(&self, task: TaskId) -> Option<(Strategy, Ranking)> {
        falak_core::election::rank_task(&self.state, &BTreeMap::new(), self.me, task)
    }

    /// Elect the best-ranked node for a task and start it; returns the fencing token.
    pub fn elect_and_start(&mut self, task: TaskId) -> u64 {
        let (strategy, ranking) = self.ranking(task).expect("task is placeable");
        assert!(ranking.fitting > 0, "some node fits {task}");
        let winner = ranking.candidates[0].node;
        let attempt = self.state.task(task).unwrap().attempt;
        let now = self.now;
        let decision = Decision {
            task,
            attempt,
            strategy,
            winner,
            winner_rank: 0,
            candidates: ranking.candidates,
            decided_at: now,
        };
        let outcome =
            self.write(|now| Command::Claim { task, attempt, node: winner, lease_ms: 60_000, decision, now }).unwrap();
        let Outcome::Claimed { fencing, .. } = outcome else { panic!("claim of {task} refused: {outcome:?}") };
        self.write(|now| Command::Started { task, fencing, now }).unwrap();
        fencing
    }

    /// Run a task to its end with `exit_code` and `stdout`.
    pub fn run(&mut self, task: TaskId, exit_code: i32, stdout: &str) {
        let fencing = self.elect_and_start(task);
        let report = TaskReport {
            exit_code: Some(exit_code),
            error: None,
            duration_ms: 5,
            stdout_tail: stdout.to_owned(),
            stderr_tail: format!("stderr of {task}\n"),
        };
        let node = self.state.task(task).and_then(|t| t.claim.as_ref()).map(|c| c.node).expect("claimed");
        self.write(|now| Command::Finish { task, node, fencing, report, now }).unwrap();
    }

    fn handle(&mut self, action: Action) {
        match action {
            Action::Ready { reply } => {
                let readiness = if self.ready {
                    Readiness { ready: true, reason: None, leader: Some(self.me), term: 1, applied: Some(1) }
                } else {
                    Readiness {
                        ready: false,
                        reason: Some("no ledger leader is known yet".into()),
                        leader: None,
                        term: 1,
                        applied: None,
                    }
                };
                let _ = reply.send(Ok(readiness));
            }
            Action::Metrics { reply } => {
                let _ = reply.send(Ok("# TYPE falak_up gauge\nfalak_up 1\n".to_owned()));
            }
            Action::ListNodes { reply } => {
                let nodes = self
                    .state
                    .nodes()
                    .map(|entry| {
                        let live = NodeLive {
                            health: Health::Healthy,
                            gossip: None,
                            voter: true,
                            leader: entry.record.id == self.me,
                            rtt_ms: Some(0.25),
                        };
                        NodeInfo::new(entry, &self.state, live)
                    })
                    .collect();
                let _ = reply.send(Ok(nodes));
            }
            Action::ApplyCapsule { spec, signature, reply, .. } => {
                let result =
                    self.write(|now| Command::ApplyCapsule { spec, signature, now }).map(|outcome| match outcome {
                        Outcome::CapsuleApplied { name, version, unchanged } => {
                            CapsuleApplied { name, version, unchanged }
                        }
                        other => panic!("unexpected {other:?}"),
                    });
                let _ = reply.send(result);
            }
            Action::RollbackCapsule { name, version, reply } => {
                let result =
                    self.write(|now| Command::RollbackCapsule { name, version, now }).map(|outcome| match outcome {
                        Outcome::CapsuleApplied { name, version, unchanged } => {
                            CapsuleApplied { name, version, unchanged }
                        }
                        other => panic!("unexpected {other:?}"),
                    });
                let _ = reply.send(result);
            }
            Action::ListCapsules { reply } => {
                let _ = reply.send(Ok(CapsuleSummary::list(&self.state)));
            }
            Action::GetCapsule { name, reply } => {
                let _ = reply.send(CapsuleInfo::get(&self.state, &name));
            }
            Action::SubmitJob { request, idempotency, reply } => {
                self.last_key = idempotency;
                let origin = self.me;
                let result = self.write(|now| Command::SubmitJob { request, origin, now }).and_then(|outcome| {
                    let Outcome::JobSubmitted { job, .. } = outcome else { panic!("unexpected {outcome:?}") };
                    JobInfo::get(&self.state, job)
                });
                let _ = reply.send(result);
            }
            Action::ListJobs { limit, reply } => {
                let _ = reply.send(Ok(JobInfo::list(&self.state, limit)));
            }
            Action::GetJob { job, reply } => {
                let _ = reply.send(JobInfo::get(&self.state, job));
            }
            Action::JobTasks { job, reply } => {
                let _ = reply.send(TaskInfo::of_job(&self.state, job));
            }
            Action::CancelJob { job, reply } => {
                let result =
                    self.write(|now| Command::CancelJob { job, now }).and_then(|_| JobInfo::get(&self.state, job));
                let _ = reply.send(result);
            }
            Action::GetTask { task, reply } => {
                let _ = reply.send(TaskInfo::get(&self.state, task));
            }
            Action::TaskLogs { task, stream, max_bytes, reply } => {
                let result = TaskInfo::get(&self.state, task).and_then(|info| match info.node {
                    Some(node) => {
                        let text = format!("{} of {task} on {}\n", stream.name(), node.name);
                        Ok(falak_core::job::tail(&text, max_bytes))
                    }
                    None => Err(ApiError::not_found(format!("task {task} has not run yet"))),
                });
                let _ = reply.send(result);
            }
            Action::TaskDecision { task, reply } => {
                let result = DecisionInfo::get(&self.state, task, |t| self.ranking(t.id));
                let _ = reply.send(result);
            }
            Action::ListServices { reply } => {
                let _ = reply.send(Ok(ServiceInfo::list(&self.state)));
            }
            Action::ApplyService { request, reply, .. } => {
                let origin = self.me;
                let name = request.name.clone();
                let result = self
                    .write(|now| Command::ApplyService { request, origin, now })
                    .and_then(|_| ServiceInfo::get(&self.state, &name));
                let _ = reply.send(result);
            }
            Action::UpdateService { update, reply, .. } => {
                let origin = self.me;
                let name = update.name.clone();
                let result = self
                    .write(|now| Command::UpdateService { update, origin, now })
                    .and_then(|_| ServiceInfo::get(&self.state, &name));
                let _ = reply.send(result);
            }
            Action::GetService { name, reply } => {
                let _ = reply.send(ServiceInfo::get(&self.state, &name));
            }
            Action::RemoveService { name, reply } => {
                let result = ServiceInfo::get(&self.state, &name).and_then(|service| {
                    self.write(|now| Command::RemoveService { name, now })?;
                    let job = self.state.job(service.job).expect("service job stays");
                    Ok(ServiceInfo::new(&self.state, job))
                });
                let _ = reply.send(result);
            }
            Action::ListWorkloads { reply } => {
                let _ = reply.send(Ok(WorkloadInfo::list(&self.state)));
            }
            Action::GetWorkload { workload, reply } => {
                let _ = reply.send(WorkloadInfo::get(&self.state, &workload));
            }
            Action::Join { reply, .. } => {
                let _ = reply.send(Err(ApiError::invalid("the fake node admits no one")));
            }
            Action::Subscribe { start, follow, reply } => {
                let _ = reply.send(Ok(self.subscribe(start, follow)));
            }
            Action::Function(action) => action.fail(ApiError::unavailable("the fake node runs no functions")),
            Action::Image(action) => action.fail(ApiError::unavailable("the fake node holds no images")),
            action @ (Action::CreateToken { .. }
            | Action::CreateJoinToken { .. }
            | Action::ListJoinTokens { .. }
            | Action::RevokeJoinToken { .. }
            | Action::RevokeNode { .. }
            | Action::ListTokens { .. }
            | Action::RevokeToken { .. }
            | Action::ListDeployers { .. }
            | Action::TrustDeployer { .. }
            | Action::RevokeDeployer { .. }) => {
                action.fail(ApiError::unavailable("the fake node keeps no credentials"))
            }
        }
    }
}

/// A router served on 127.0.0.1:0 in front of a fake node.
pub struct Harness {
    pub client: Client,
    pub base: String,
    fake: Arc<Mutex<FakeNode>>,
    /// The admin token `client` sends.
    pub token: String,
}

impl Harness {
    pub fn fake(&self) -> MutexGuard<'_, FakeNode> {
        self.fake.lock().unwrap()
    }

    /// A plain HTTP client for requests the typed client would never send; it sends the
    /// harness's admin token.
    pub fn raw(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", self.token).parse().unwrap());
        reqwest::Client::builder().default_headers(headers).build().unwrap()
    }
}

pub async fn spawn() -> Harness {
    spawn_with(ApiConfig::default()).await
}

pub async fn spawn_with(config: ApiConfig) -> Harness {
    let (tx, mut rx) = mpsc::channel::<Action>(64);
    let fake = Arc::new(Mutex::new(FakeNode::new()));
    let loop_fake = fake.clone();
    tokio::spawn(async move {
        while let Some(action) = rx.recv().await {
            loop_fake.lock().unwrap().handle(action);
        }
    });
    let (auth, token) = falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin);
    let base = serve(falak_api::router(tx, config, auth)).await;
    let deployer = std::sync::Arc::new(falak_core::signing::deployer_for_tests().0);
    let client = Client::new(&base).unwrap().with_token(Some(token.clone())).with_deployer(Some(deployer));
    Harness { client, base, fake, token }
}

/// Serve a router on a free loopback port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}
