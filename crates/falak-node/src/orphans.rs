//! Task processes left behind by a previous run of this node.
//!
//! A task runs in its own session and process group, so it survives the node being killed
//! with `kill -9`. Its attempt has been re-elected elsewhere by the time the node is back, and
//! the ledger would reject its result anyway; but a leftover service replica would keep running
//! (holding ports, memory) with nobody watching it. So the runner records each attempt's
//! process group in `DATA_DIR/groups/<task>.a<attempt>` (leader pid and start time; outside
//! the task's own directory, where the task could rewrite it), removes the record when the
//! attempt ends, and a starting node kills every group still recorded.
//!
//! The start time guards against pid reuse: a process counts as a leftover only if it is in
//! the recorded group and started no earlier than the recorded leader, and a recorded leader
//! pid now held by a different process means the group is gone.

use std::fs;
use std::path::Path;

/// `(state, pgid, start time in clock ticks)` from `/proc/<pid>/stat`. The command name (field
/// 2) may contain spaces and parentheses, so parse after the last `)`.
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) ... starttime(22) → indexes 0, 1, 2, ..., 19.
    let state = fields.first()?.chars().next()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, pgid, start))
}

/// Record the process group of a started attempt as `groups_dir/name`.
pub fn record(groups_dir: &Path, name: &str, leader: u32) {
    let Some((_, _, start)) = stat(leader) else { return };
    let written =
        fs::create_dir_all(groups_dir).and_then(|()| fs::write(groups_dir.join(name), format!("{leader} {start}\n")));
    if let Err(e) = written {
        tracing::warn!(dir = %groups_dir.display(), error = %e, "cannot record the task's process group");
    }
}

/// The attempt ended and its group was stopped: forget it.
pub fn forget(groups_dir: &Path, name: &str) {
    let _ = fs::remove_file(groups_dir.join(name));
}

/// Kill every process of every group recorded in `groups_dir`; returns how many processes.
/// Blocking: scans `/proc` once per recorded group.
pub fn kill_leftovers(groups_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(groups_dir) else { return 0 };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = fs::read_to_string(&path) else { continue };
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(leader)), Some(Ok(start))) = (parts.next(), parts.next())
            && let Ok(leader) = u32::try_from(leader)
        {
            killed += kill_group(leader, start);
        }
        let _ = fs::remove_file(&path);
    }
    killed
}

fn kill_group(pgid: u32, leader_start: u64) -> usize {
    if let Some((_, _, start)) = stat(pgid)
        && start != leader_start
    {
        // The leader's pid now belongs to another process: the recorded group is long gone.
        return 0;
    }
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some((state, group, start)) = stat(pid) else { continue };
        if group == pgid && start >= leader_start && state != 'Z' && state != 'X' {
            // SAFETY: kill(2) on a pid verified to be in the recorded group.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_group_is_killed_and_an_unrelated_one_is_not() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let spawn = || {
            std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 30 & sleep 30; wait"])
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut recorded = spawn();
        let mut unrelated = spawn();
        let groups = dir.path().join("groups");
        std::thread::sleep(std::time::Duration::from_millis(100));
        record(&groups, "j1-t0.a1", recorded.id());
        assert!(groups.join("j1-t0.a1").exists());
        // The shell and both sleeps.
        assert_eq!(kill_leftovers(&groups), 3);
        assert!(recorded.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!groups.join("j1-t0.a1").exists(), "the record is consumed");
        assert!(unrelated.try_wait().unwrap().is_none(), "an unrecorded group is left alone");
        // A record whose leader pid now belongs to another process kills nothing.
        fs::write(groups.join("j1-t1.a1"), format!("{} 1\n", unrelated.id())).unwrap();
        assert_eq!(kill_leftovers(&groups), 0);
        // SAFETY: kill(2) on the test's own process group.
        unsafe { libc::kill(-(unrelated.id() as i32), libc::SIGKILL) };
        let _ = unrelated.wait();
    }
}
