//! Workloads cannot reach the node's secrets or one another, on a mesh that `falak up` runs as
//! root and on one it runs as an ordinary user (the test creates the user and drops to it:
//! CI runs as root, so nothing else covers the unprivileged path). Each mesh lives under a
//! `0700` directory, so deploying and invoking functions there is covered too.
//!
//! A victim task (writes a file, logs a line, sleeps) and a victim function (a warm python
//! instance with its zygote) run first; then a thief task and a thief `exec` function try every
//! way in, one line per attempt, and every attempt must fail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::up::Up;

/// Who runs the mesh and its CLI: the test's own user, or an unprivileged one it dropped to.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The unprivileged user the tests drop to: `falak-test`, created (with a home) when missing.
/// `None` when the test already runs unprivileged.
pub fn unprivileged_user() -> Option<TestUser> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    const NAME: &str = "falak-test";
    let exists = std::process::Command::new("id").arg(NAME).output().is_ok_and(|o| o.status.success());
    if !exists {
        let made = std::process::Command::new("useradd")
            .args(["--create-home", "--user-group", "--shell", "/bin/sh", NAME])
            .output()
            .expect("useradd (passwd package) creates the test user");
        // A concurrent test may have made it meanwhile.
        let exists = std::process::Command::new("id").arg(NAME).output().is_ok_and(|o| o.status.success());
        assert!(exists, "cannot create user {NAME}: {made:?}");
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id").args([flag, NAME]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let home = PathBuf::from(format!("/home/{NAME}"));
    std::fs::create_dir_all(&home).unwrap();
    let (uid, gid) = (id("-u"), id("-g"));
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    Some(TestUser { uid, gid, home })
}

/// A place to run `falak` as `user`: a copy of the binary anyone may run, and a working
/// directory inside a `0700` directory of that user's.
pub struct Workspace {
    pub user: Option<TestUser>,
    pub bin: PathBuf,
    pub cwd: PathBuf,
    _root: tempfile::TempDir,
}

impl Workspace {
    pub fn new(user: Option<TestUser>) -> Workspace {
        let root = tempfile::tempdir().unwrap();
        let bin_dir = root.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let bin = bin_dir.join("falak");
        std::fs::copy(env!("CARGO_BIN_EXE_falak"), &bin).unwrap();
        for dir in [root.path(), bin_dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = root.path().join("closed");
        let cwd = closed.join("work");
        std::fs::create_dir_all(&cwd).unwrap();
        if let Some(user) = &user {
            for dir in [&closed, &cwd] {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        Workspace { user, bin, cwd, _root: root }
    }

    /// `falak ARGS` as the workspace's user, in `cwd`.
    pub fn falak(&self, args: &[&str]) -> Command {
        self.falak_through(&[], args)
    }

    /// [`Workspace::falak`] through `wrapper`: a program and its arguments, which end up
    /// running the ones after them (the binary and `args`).
    pub fn falak_through(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let bin = self.bin.to_str().unwrap();
        let mut program: Vec<&str> = wrapper.to_vec();
        program.push(bin);
        let mut command = match &self.user {
            Some(user) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--clear-groups")
                    .arg("--")
                    .args(&program)
                    .env("HOME", &user.home)
                    .env("USER", "falak-test");
                command
            }
            None => {
                let mut command = Command::new(program[0]);
                command.args(&program[1..]);
                command
            }
        };
        command
            .args(args)
            .current_dir(&self.cwd)
            .env_remove("FALAK_API")
            .env_remove("FALAK_TOKEN")
            .env_remove("FALAK_CA")
            .env("XDG_CONFIG_HOME", self.cwd.join(".config"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Write `text` to `name` in `cwd`, readable by the workspace's user.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.cwd.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
            if let Some(user) = &self.user {
                std::os::unix::fs::chown(parent, Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        std::fs::write(&path, text).unwrap();
        if let Some(user) = &self.user {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
        }
        path
    }

    /// Run `falak ARGS` to the end (within `limit`); its stdout, or a panic with everything.
    pub async fn run(&self, args: &[&str], limit: Duration) -> String {
        self.run_in(&self.cwd, args, limit).await
    }

    /// [`Workspace::run`] in another directory.
    pub async fn run_in(&self, dir: &Path, args: &[&str], limit: Duration) -> String {
        let output = tokio::time::timeout(limit, self.falak(args).current_dir(dir).output())
            .await
            .unwrap_or_else(|_| panic!("falak {args:?} did not finish within {limit:?}"))
            .unwrap();
        let text = format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "falak {args:?} failed ({}):\n{text}", output.status);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `falak up ARGS` in the background, its output in files in `cwd`.
    pub fn up(&self, args: &[&str]) -> Up {
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        Up::spawn(self.falak(&all), &self.cwd, "up")
    }
}

/// Wait until `find` returns something (within `limit`).
async fn wait_until<T>(what: &str, limit: Duration, mut find: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = find() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not appear within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every path under `dir` (depth-first, at most 6 levels) whose name satisfies `matches`.
fn find_files(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, matches: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if matches(&entry.file_name().to_string_lossy()) {
                found.push(path.clone());
            }
            if kind.is_dir() && depth < 6 {
                walk(&path, depth + 1, matches, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, 0, matches, &mut found);
    found.sort();
    found
}

/// The pid of a process whose environment holds `marker`.
fn pid_with_env(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()).then_some(pid)
    })
}

/// The thief's script: one line per attempt, `NAME: denied` or `NAME: READ`, and a control
/// that must succeed (its own file) so that a script that cannot run at all does not pass.
fn thief_script(attempts: &[(&str, String)]) -> String {
    let mut script = String::from(
        "attempt() { if sh -c \"$2\" >/dev/null 2>&1; then echo \"$1: READ\"; else echo \"$1: denied\"; fi; }\n\
         attempt control 'echo mine > \"$TMPDIR/mine\" && cat \"$TMPDIR/mine\"'\n",
    );
    for (name, command) in attempts {
        script.push_str(&format!("attempt {name} '{}'\n", command.replace('\'', "'\\''")));
    }
    script
}

fn read(path: &Path) -> String {
    format!("cat {}", path.display())
}

fn connect(path: &Path) -> String {
    format!(
        "python3 -c \"import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\" {}",
        path.display()
    )
}

/// Check the thief's report: the control worked and every attempt was denied.
fn assert_all_denied(who: &str, report: &str, attempts: &[(&str, String)]) {
    assert!(report.contains("control: READ"), "{who}: the script ran and could use its own dir:\n{report}");
    for (name, command) in attempts {
        assert!(report.contains(&format!("{name}: denied")), "{who}: {name} ({command}) was not denied:\n{report}");
    }
}

async fn workloads_cannot_reach_the_node_or_each_other(user: Option<TestUser>) {
    let who = if user.is_some() { "as an unprivileged user" } else { "as this test's user" };
    let ws = Workspace::new(user);
    let mut mesh = ws.up(&["--nodes", "1", "--base-port", "0"]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(120)).await;
    let data = ws.cwd.join(".falak");
    let node_dir = data.join("node-1");

    // The victims: a task that keeps a file, a log line and a secret in its environment, and
    // a warm function with its zygote.
    ws.write(
        "victim.yaml",
        "name: victim\nkind: process\ncommand: [\"/bin/sh\", \"-c\", \"echo victim-file > secret.txt; echo victim-log; exec sleep 600\"]\n\
         env: { VICTIM_MARKER: task-victim }\nresources: { cpu: 100m, memory: 64Mi }\n",
    );
    ws.run(&["capsule", "apply", "-f", "victim.yaml"], Duration::from_secs(30)).await;
    ws.run(&["job", "submit", "victim", "--tasks", "1"], Duration::from_secs(30)).await;
    let secret_file = wait_until("the victim task's file", Duration::from_secs(30), || {
        find_files(&node_dir.join("tasks"), &|name| name == "secret.txt").into_iter().next()
    })
    .await;
    let victim_dir = secret_file.parent().unwrap().to_path_buf();
    let task_pid =
        wait_until("the victim task's process", Duration::from_secs(10), || pid_with_env("VICTIM_MARKER=task-victim"))
            .await;

    ws.write("victim-fn/main.py", "def handle(request):\n    return 'victim'\n");
    ws.write("victim-fn.yaml", "name: victim-fn\nkind: function\nruntime: python\nhandler: main.handle\nsource: ./victim-fn\nenv: { VICTIM_MARKER: fn-victim }\n");
    ws.run(&["fn", "deploy", "-f", "victim-fn.yaml"], Duration::from_secs(120)).await;
    let answer = ws.run(&["fn", "invoke", "victim-fn"], Duration::from_secs(60)).await;
    assert!(answer.contains("victim"), "{answer}");
    let sockets = |suffix: &'static str| {
        let mut found = find_files(&node_dir.join("functions"), &|name| name.ends_with(suffix));
        found.extend(
            find_files(&std::env::temp_dir(), &|name| name.ends_with(suffix))
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("falak-")),
        );
        found
    };
    let instance_socket =
        wait_until("the victim's instance socket", Duration::from_secs(10), || sockets(".sock").into_iter().next())
            .await;
    let control_socket = wait_until("the victim's zygote control socket", Duration::from_secs(10), || {
        sockets(".ctl").into_iter().next()
    })
    .await;
    let fn_pid = wait_until("the victim function's process", Duration::from_secs(10), || {
        pid_with_env("VICTIM_MARKER=fn-victim")
    })
    .await;
    let (node_pid, api_port) = wait_until("the node's process", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(data.join("mesh.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let port =
            json["nodes"][0]["api_url"].as_str()?.rsplit(':').next()?.trim_end_matches('/').parse::<u16>().ok()?;
        Some((json["nodes"][0]["pid"].as_u64()? as u32, port))
    })
    .await;

    let attempts: Vec<(&str, String)> = vec![
        ("admin_token", read(&data.join("credentials/admin.token"))),
        ("deployer_key", read(&data.join("credentials/deployer.key"))),
        ("node_key", read(&node_dir.join("node.key"))),
        ("ca_key", read(&node_dir.join("ca.key"))),
        ("mesh_secret", read(&node_dir.join("mesh.secret"))),
        ("ledger", read(&node_dir.join("ledger/ledger.redb"))),
        ("node_config", read(&node_dir.join("node.yaml"))),
        ("other_task_file", read(&secret_file)),
        ("other_task_log", read(&victim_dir.join("stdout.log"))),
        ("other_task_dir", format!("ls {}", victim_dir.display())),
        ("instance_socket", connect(&instance_socket)),
        ("zygote_control_socket", connect(&control_socket)),
        ("task_environ", format!("cat /proc/{task_pid}/environ")),
        ("function_environ", format!("cat /proc/{fn_pid}/environ")),
        ("node_environ", format!("cat /proc/{node_pid}/environ")),
        ("node_root", format!("ls /proc/{node_pid}/root{}", node_dir.display())),
        // A pid namespace of its own: neither the node nor another workload is in its /proc.
        ("node_process", format!("test -d /proc/{node_pid}")),
        ("task_process", format!("test -d /proc/{task_pid}")),
        ("function_process", format!("test -d /proc/{fn_pid}")),
        ("node_api", format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {api_port}), 2)\"")),
    ];
    // Every target exists (as the test, root, sees it), so a denial is the sandbox's doing.
    for path in [
        data.join("credentials/admin.token"),
        data.join("credentials/deployer.key"),
        node_dir.join("node.key"),
        node_dir.join("ca.key"),
        node_dir.join("mesh.secret"),
        node_dir.join("ledger/ledger.redb"),
        node_dir.join("node.yaml"),
        secret_file.clone(),
        victim_dir.join("stdout.log"),
        instance_socket.clone(),
        control_socket.clone(),
        PathBuf::from(format!("/proc/{task_pid}/environ")),
        PathBuf::from(format!("/proc/{fn_pid}/environ")),
        PathBuf::from(format!("/proc/{node_pid}/environ")),
    ] {
        assert!(path.exists(), "{path:?} exists");
    }
    let script = thief_script(&attempts);

    // A process task of another capsule.
    let command = serde_json::to_string(&["/bin/sh", "-c", &script]).unwrap();
    ws.write(
        "thief.yaml",
        &format!("name: thief\nkind: process\ncommand: {command}\nresources: {{ cpu: 100m, memory: 64Mi }}\n"),
    );
    ws.run(&["capsule", "apply", "-f", "thief.yaml"], Duration::from_secs(30)).await;
    let report = ws.run(&["job", "submit", "thief", "--tasks", "1", "--wait"], Duration::from_secs(60)).await;
    assert_all_denied(&format!("a process task {who}"), &report, &attempts);

    // An `exec` function.
    ws.write("thief-fn/probe.sh", &script);
    ws.write(
        "thief-fn.yaml",
        "name: thief-fn\nkind: function\nruntime: exec\ncommand: [\"/bin/sh\", \"./probe.sh\"]\nsource: ./thief-fn\n",
    );
    ws.run(&["fn", "deploy", "-f", "thief-fn.yaml"], Duration::from_secs(120)).await;
    let report = ws.run(&["fn", "invoke", "thief-fn"], Duration::from_secs(60)).await;
    assert_all_denied(&format!("an exec function {who}"), &report, &attempts);

    mesh.stop_within(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_workloads_cannot_reach_the_node_or_each_other() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the mesh as root (CI does); the unprivileged case is the next test"
    );
    workloads_cannot_reach_the_node_or_each_other(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_unprivileged_user_workloads_cannot_reach_the_node_or_each_other() {
    workloads_cannot_reach_the_node_or_each_other(unprivileged_user()).await;
}

/// The README's `hello.yaml`, taken from the README itself so that the test follows it.
fn readme_hello_yaml() -> String {
    let readme = include_str!("../../../../README.md");
    let start = readme.find("cat > hello.yaml <<'YAML'\n").expect("the README writes hello.yaml");
    let body = &readme[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\nYAML\n").expect("the heredoc ends")].to_owned() + "\n"
}

/// The README's first command, as a user who is not root would run it (the test drops to one
/// when it runs as root): the demo's job completes and `greet` answers through every node; then
/// the README's `hello.yaml` job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_runs_the_demo_and_the_readme_s_job() {
    let ws = Workspace::new(unprivileged_user());
    let mut mesh = ws.up(&["--demo", "--base-port", "0"]);
    // The try line names the binary that runs (its path: it is not on PATH here).
    mesh.wait_for_output(" fn invoke greet --data you`", Duration::from_secs(180)).await;
    let out = mesh.output();
    assert!(out.contains("demo: job j1 COMPLETED"), "{out}");
    for i in 0..12 {
        assert!(out.contains(&format!("task {i} of 12\n")), "{out}");
    }
    for node in ["node-1", "node-2", "node-3"] {
        let answered =
            out.lines().any(|l| l.contains("/fn/greet -> 200") && l.contains(&format!("\"hello\": \"{node}\"")));
        assert!(answered, "greet answered through {node}:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");

    // The CLI finds the mesh from a subdirectory of where `falak up` ran.
    ws.write("sub/dir/.keep", "");
    let nodes = ws.run_in(&ws.cwd.join("sub/dir"), &["nodes"], Duration::from_secs(30)).await;
    for node in ["node-1", "node-2", "node-3"] {
        assert!(nodes.contains(node), "falak nodes from a subdirectory lists {node}:\n{nodes}");
    }

    ws.write("hello.yaml", &readme_hello_yaml());
    ws.run(&["capsule", "apply", "-f", "hello.yaml"], Duration::from_secs(30)).await;
    let result = ws.run(&["job", "submit", "hello", "--tasks", "20", "--wait"], Duration::from_secs(120)).await;
    for i in 0..20 {
        assert!(result.contains(&format!("task {i} of 20")), "{result}");
    }
    mesh.stop_within(Duration::from_secs(20)).await;
}

/// `kill -9` of a node of an unprivileged mesh mid-job: its tasks, which ran in user
/// namespaces, are run again elsewhere and the job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_mesh_reruns_the_tasks_of_a_killed_node() {
    let ws = Workspace::new(unprivileged_user());
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0"]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(120)).await;
    ws.write(
        "sleeper.yaml",
        "name: sleeper\nkind: process\ncommand: [\"/bin/sh\", \"-c\", \"sleep 3; echo done $FALAK_TASK_INDEX\"]\n\
         resources: { cpu: 100m, memory: 32Mi }\nplacement: { strategy: balanced, labels: {}, max_attempts: 3 }\n",
    );
    ws.run(&["capsule", "apply", "-f", "sleeper.yaml"], Duration::from_secs(30)).await;
    ws.run(&["job", "submit", "sleeper", "--tasks", "9"], Duration::from_secs(30)).await;
    let node_2 = ws.cwd.join(".falak/node-2");
    // Once node-2 runs some of the tasks, kill it.
    wait_until("node-2 running a task", Duration::from_secs(30), || {
        find_files(&node_2.join("tasks"), &|name| name == "stdout.log").into_iter().next()
    })
    .await;
    let pid = wait_until("node-2's pid", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(ws.cwd.join(".falak/mesh.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let nodes = json["nodes"].as_array()?;
        nodes.iter().find(|n| n["name"] == "node-2")?["pid"].as_i64()
    })
    .await;
    // SAFETY: a signal to a node process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let result = ws.run(&["job", "wait", "j1"], Duration::from_secs(90)).await;
    for i in 0..9 {
        assert!(result.contains(&format!("done {i}")), "task {i} completed:\n{result}");
    }
    mesh.stop_within(Duration::from_secs(20)).await;
}
