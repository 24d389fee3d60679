//! `RecordingExecutor`: a fake executor for tests and the simulation. It runs nothing.
//!
//! It records every call, and ends each attempt the way a [`Script`] says after a scripted
//! `tokio::time` duration, so a test under `tokio::time::pause()` runs an hour-long task in no
//! time and deterministically. Always compiled, so other crates' tests can use it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::executor::{Executor, ExitWatch, PrepareError, Running, StartError};
use crate::exit::{Exit, ExitReason, Stats};
use crate::log::{LogChunk, ReadLogError, Stream, chunk_range};
use crate::task::TaskSpec;

/// One call the node made, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "a test record: comparing whole specs matters more than its size")]
pub enum Call {
    Prepare { task_id: String, attempt: u32 },
    Start(TaskSpec),
    Stop { task_id: String, attempt: u32, grace: Duration },
    ReadLog { workdir: PathBuf, stream: Stream },
}

/// How one scripted attempt goes, and what it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
}

/// How a scripted attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Run for `after`, then exit with `code`.
    Exit { after: Duration, code: i32 },
    /// Run for `after`, then die of `signal` (a crash, the OOM killer).
    Signal { after: Duration, signal: i32 },
    /// Run until stopped or timed out.
    Hang,
    /// `prepare` (or `start`, when the node skips prepare) fails with this message.
    FailPrepare(String),
    /// `start` fails with this message.
    FailStart(String),
}

impl Script {
    /// Exit with `code` after `after`.
    pub fn exit(code: i32, after: Duration) -> Script {
        Script::from(Outcome::Exit { after, code })
    }

    pub fn signal(signal: i32, after: Duration) -> Script {
        Script::from(Outcome::Signal { after, signal })
    }

    pub fn hang() -> Script {
        Script::from(Outcome::Hang)
    }

    pub fn fail_prepare(message: impl Into<String>) -> Script {
        Script::from(Outcome::FailPrepare(message.into()))
    }

    pub fn fail_start(message: impl Into<String>) -> Script {
        Script::from(Outcome::FailStart(message.into()))
    }

    pub fn with_stdout(mut self, text: impl Into<String>) -> Script {
        self.stdout = text.into();
        self
    }

    pub fn with_stderr(mut self, text: impl Into<String>) -> Script {
        self.stderr = text.into();
        self
    }
}

impl From<Outcome> for Script {
    fn from(outcome: Outcome) -> Script {
        Script { outcome, stdout: String::new(), stderr: String::new() }
    }
}

/// The fake. Clones share one record.
#[derive(Debug, Clone)]
pub struct RecordingExecutor {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    calls: Vec<Call>,
    /// Per task id, the scripts of its next attempts, in order.
    scripts: HashMap<String, VecDeque<Script>>,
    default: Script,
    /// What each attempt printed, by working directory.
    logs: HashMap<PathBuf, [String; 2]>,
    attempts: Vec<(String, u32, ExitWatch)>,
    next_pid: u32,
}

impl Default for RecordingExecutor {
    fn default() -> Self {
        RecordingExecutor::new()
    }
}

impl RecordingExecutor {
    /// A fake whose attempts exit 0 at once unless scripted otherwise.
    pub fn new() -> Self {
        RecordingExecutor {
            state: Arc::new(Mutex::new(State {
                calls: Vec::new(),
                scripts: HashMap::new(),
                default: Script::exit(0, Duration::ZERO),
                logs: HashMap::new(),
                attempts: Vec::new(),
                next_pid: 100_000,
            })),
        }
    }

    /// Queue `script` for the next unscripted attempt of `task_id`.
    pub fn script(&self, task_id: impl Into<String>, script: Script) {
        self.lock().scripts.entry(task_id.into()).or_default().push_back(script);
    }

    /// What attempts without a queued script do.
    pub fn set_default(&self, script: Script) {
        self.lock().default = script;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The specs of every start, in order.
    pub fn started(&self) -> Vec<TaskSpec> {
        let state = self.lock();
        state.calls.iter().filter_map(|c| if let Call::Start(spec) = c { Some(spec.clone()) } else { None }).collect()
    }

    /// `(task_id, attempt)` of the attempts that started and have not ended.
    pub fn running(&self) -> Vec<(String, u32)> {
        let state = self.lock();
        state.attempts.iter().filter(|(_, _, exit)| exit.get().is_none()).map(|(t, a, _)| (t.clone(), *a)).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep the record usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, call: Call) {
        self.lock().calls.push(call);
    }
}

impl Executor for RecordingExecutor {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), PrepareError>> {
        Box::pin(async move {
            self.record(Call::Prepare { task_id: spec.task_id.clone(), attempt: spec.attempt });
            spec.validate()?;
            let mut state = self.lock();
            let queue = state.scripts.entry(spec.task_id.clone()).or_default();
            if let Some(Outcome::FailPrepare(message)) = queue.front().map(|s| s.outcome.clone()) {
                queue.pop_front();
                return Err(PrepareError::Backend { task_id: spec.task_id.clone(), message });
            }
            Ok(())
        })
    }

    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Arc<dyn Running>, StartError>> {
        Box::pin(async move {
            self.record(Call::Start(spec.clone()));
            spec.validate().map_err(PrepareError::from)?;
            let mut state = self.lock();
            let script = match state.scripts.get_mut(&spec.task_id).and_then(VecDeque::pop_front) {
                Some(script) => script,
                None => state.default.clone(),
            };
            let task_id = spec.task_id.clone();
            match script.outcome {
                Outcome::FailPrepare(message) => return Err(PrepareError::Backend { task_id, message }.into()),
                Outcome::FailStart(message) => return Err(StartError::Backend { task_id, message }),
                Outcome::Exit { .. } | Outcome::Signal { .. } | Outcome::Hang => {}
            }
            state.logs.insert(spec.workdir.clone(), [script.stdout.clone(), script.stderr.clone()]);
            let pid = state.next_pid;
            state.next_pid += 1;
            let running = FakeRunning::spawn(self.clone(), spec, script, pid);
            state.attempts.push((running.task_id.clone(), running.attempt, running.exit.clone()));
            Ok(running as Arc<dyn Running>)
        })
    }

    fn read_log<'a>(
        &'a self,
        workdir: &'a Path,
        stream: Stream,
        offset: Option<u64>,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<LogChunk, ReadLogError>> {
        Box::pin(async move {
            self.record(Call::ReadLog { workdir: workdir.to_owned(), stream });
            let state = self.lock();
            let Some(logs) = state.logs.get(workdir) else {
                return Err(ReadLogError::NotFound { workdir: workdir.to_owned(), file: stream.file_name() });
            };
            let [stdout, stderr] = logs;
            let text = match stream {
                Stream::Stdout => stdout.as_bytes(),
                Stream::Stderr => stderr.as_bytes(),
            };
            let size = text.len() as u64;
            let (start, end) = chunk_range(size, offset, max_bytes);
            let data = text[start as usize..end as usize].to_vec();
            Ok(LogChunk { data, offset: start, next_offset: end, size })
        })
    }
}

/// A fake attempt: a tokio task that sleeps until its scripted end, a timeout or a stop.
#[derive(Debug)]
struct FakeRunning {
    executor: RecordingExecutor,
    task_id: String,
    attempt: u32,
    pid: u32,
    started: Instant,
    stop: mpsc::UnboundedSender<Duration>,
    exit: ExitWatch,
}

impl FakeRunning {
    fn spawn(executor: RecordingExecutor, spec: TaskSpec, script: Script, pid: u32) -> Arc<FakeRunning> {
        let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<Duration>();
        let (exit_tx, exit) = ExitWatch::channel();
        let started = Instant::now();
        let (ends_at, code, signal) = match script.outcome {
            Outcome::Exit { after, code } => (Some(started + after), Some(code), None),
            Outcome::Signal { after, signal } => (Some(started + after), None, Some(signal)),
            _ => (None, None, None),
        };
        let (task_id, attempt, timeout) = (spec.task_id.clone(), spec.attempt, spec.timeout);
        let timeout_at = timeout.map(|t| started + t);
        let far = started + Duration::from_secs(86_400 * 365);
        let tail = |text: &str| falak_core::job::tail(text, spec.output_tail_bytes);
        let (stdout_tail, stderr_tail) = (tail(&script.stdout), tail(&script.stderr));
        tokio::spawn(async move {
            let mut stop_open = true;
            let (reason, code, signal) = loop {
                // Biased, so an end and a timeout due at the same instant resolve the same
                // way on every run.
                tokio::select! {
                    biased;
                    () = sleep_until(ends_at.unwrap_or(far)), if ends_at.is_some() => break (ExitReason::Exited, code, signal),
                    () = sleep_until(timeout_at.unwrap_or(far)), if timeout_at.is_some() => {
                        break (ExitReason::TimedOut(timeout.unwrap_or_default()), None, Some(libc::SIGTERM));
                    }
                    request = stop_rx.recv(), if stop_open => match request {
                        Some(_grace) => break (ExitReason::Stopped, None, Some(libc::SIGTERM)),
                        None => stop_open = false,
                    },
                }
            };
            let duration = Instant::now() - started;
            exit_tx.send_replace(Some(Exit { reason, code, signal, duration, stdout_tail, stderr_tail }));
        });
        Arc::new(FakeRunning { executor, task_id, attempt, pid, started, stop: stop_tx, exit })
    }
}

impl Running for FakeRunning {
    fn task_id(&self) -> &str {
        &self.task_id
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&self) -> BoxFuture<'_, Exit> {
        Box::pin(self.exit.wait())
    }

    fn try_exit(&self) -> Option<Exit> {
        self.exit.get()
    }

    fn stop(&self, grace: Duration) -> BoxFuture<'_, Exit> {
        self.executor.record(Call::Stop { task_id: self.task_id.clone(), attempt: self.attempt, grace });
        let _ = self.stop.send(grace);
        Box::pin(self.exit.wait())
    }

    fn stats(&self) -> BoxFuture<'_, Stats> {
        Box::pin(async move {
            match self.exit.get() {
                Some(exit) => Stats { elapsed: exit.duration, rss_bytes: None, processes: Some(0) },
                None => Stats { elapsed: Instant::now() - self.started, rss_bytes: None, processes: Some(1) },
            }
        })
    }
}
