//! What the host offers: capacity detected from the machine.

use falak_core::resources::Resources;

/// Cpu from the number of cores the process may use; memory from `MemTotal` in /proc/meminfo.
pub fn detect_capacity() -> Resources {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory =
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| parse_mem_total(&text)).unwrap_or(1 << 30);
    Resources { cpu_millis: cores * 1000, memory_bytes: memory, gpus: 0 }
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn self_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        assert_eq!(parse_mem_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"), Some(16384 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
    }

    #[test]
    fn detects_something() {
        let c = detect_capacity();
        assert!(c.cpu_millis >= 1000 && c.memory_bytes > 0);
    }
}
