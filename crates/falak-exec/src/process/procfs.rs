//! What `/proc` says about a task's process group.
//!
//! Without cgroups the only way to see every process of a task is to scan `/proc` for its
//! process group; a process that left the group (`setsid`) is invisible here, which is one of
//! the things the cgroup sandbox will fix.

use std::fs;

/// The live processes of process group `pgid` and their summed resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct GroupUsage {
    pub processes: u32,
    pub rss_bytes: u64,
}

/// Scan `/proc` for the non-zombie members of `pgid`. Blocking, proportional to the number of
/// processes on the host.
pub(super) fn group_usage(pgid: u32) -> GroupUsage {
    let mut usage = GroupUsage::default();
    let Ok(entries) = fs::read_dir("/proc") else { return usage };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process can exit between listing and reading: it simply does not count.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        match parse_stat(&stat) {
            Some((state, group)) if group == pgid && state != 'Z' && state != 'X' => {
                usage.processes += 1;
                usage.rss_bytes += rss_bytes(pid).unwrap_or(0);
            }
            _ => {}
        }
    }
    usage
}

/// The state letter and process group from `/proc/<pid>/stat`. The command name (field 2) is
/// in parentheses and may itself contain spaces and parentheses, so parse after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        assert_eq!(parse_stat("42 (a) b (c) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (sleep) Z 1 9 9"), Some(('Z', 9)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sees_its_own_group() {
        let pgid = fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)).unwrap().1;
        let usage = group_usage(pgid);
        assert!(usage.processes >= 1);
        assert!(usage.rss_bytes > 0);
    }
}
