//! Partitions heal cleanly (issue 9), with real processes. Here: the cut itself
//! (`falak_bench::netfilter`) drops datagrams both ways and is removed on heal, on drop, on
//! panic, and, for a process that died holding one, by the next cut.
//!
//! These tests need root and iptables (`.ci/run` installs it; CI runs as root). Without them
//! they fail saying which is missing; they never skip.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use falak_bench::netfilter::{CHAIN_PREFIX, Isolation, leftover_chains};

#[test]
fn an_isolation_drops_datagrams_both_ways_until_healed_or_dropped() {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    }
    let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let gets = |from: &UdpSocket, to: &UdpSocket, to_addr| {
        from.send_to(b"ping", to_addr).expect("send succeeds even when cut off");
        let mut buf = [0u8; 16];
        to.recv_from(&mut buf).is_ok()
    };
    assert!(gets(&a, &b, b_addr) && gets(&b, &a, a_addr), "loopback UDP works before the cut");

    let cut = Isolation::ports("a", &[a_addr.port()]).expect("cutting a port off (needs root and iptables)");
    assert!(!gets(&a, &b, b_addr), "a datagram from the isolated port was delivered");
    assert!(!gets(&b, &a, a_addr), "a datagram to the isolated port was delivered");
    let dropped = cut.dropped().expect("counters");
    assert!(dropped.iter().all(|d| d.packets >= 1), "each rule dropped the datagram sent its way: {dropped:?}");
    let chain = cut.chain().to_owned();
    cut.heal().expect("healed");
    assert!(gets(&a, &b, b_addr) && gets(&b, &a, a_addr), "loopback UDP works again after the heal");
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by heal");

    // A panic unwinding through the owner heals too.
    let panicked = std::sync::Mutex::new(String::new());
    let unwound = std::panic::catch_unwind(|| {
        let cut = Isolation::ports("a", &[a_addr.port()]).expect("cut");
        *panicked.lock().expect("lock") = cut.chain().to_owned();
        panic!("a failing test (on purpose)");
    });
    assert!(unwound.is_err());
    let chain = panicked.into_inner().expect("lock");
    assert!(gets(&a, &b, b_addr), "the cut of a panicking owner is healed");
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by the unwinding");

    // A chain left by a process that is gone (a test killed mid-cut) is swept by the next cut.
    let mut child = Command::new("/bin/true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("reaped");
    let stale = format!("{CHAIN_PREFIX}{dead}-0");
    let stale = stale.as_str();
    for args in [
        vec!["-N", stale],
        vec!["-A", stale, "-p", "udp", "--dport", "9", "-j", "DROP"],
        vec!["-I", "INPUT", "1", "-j", stale],
    ] {
        let status = Command::new("iptables").arg("-w").args(&args).status().expect("iptables runs");
        assert!(status.success(), "iptables {args:?}");
    }
    let cut = Isolation::ports("a", &[a_addr.port()]).expect("cut");
    let left = leftover_chains().expect("iptables -S");
    assert!(!left.iter().any(|c| c == stale), "{stale} of dead process {dead} not swept: {left:?}");
    let rules = String::from_utf8(Command::new("iptables").args(["-w", "-S"]).output().expect("iptables").stdout)
        .expect("text");
    assert!(!rules.contains(&format!("-j {stale}")), "the jump to {stale} not swept:\n{rules}");
    let chain = cut.chain().to_owned();
    drop(cut);
    assert!(!leftover_chains().expect("iptables -S").contains(&chain), "{chain} removed by drop");
}
