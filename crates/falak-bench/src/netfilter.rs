//! Cut a node of a [`Mesh`] off the others, as a network partition would: every UDP datagram to
//! or from its transport port (QUIC: ledger, node RPC) and its gossip port (SWIM) on IPv4
//! loopback (where `provision_loopback` binds them) is dropped until the [`Isolation`] is healed
//! or dropped. Its HTTPS API (TCP) stays reachable, so a test can still ask it what it sees. Needs root and `iptables` (nf_tables or legacy backend);
//! without either, [`Isolation::node`] fails saying which is missing.
//!
//! Where the rules go, and why that cuts both directions:
//!
//! - Each isolation has its own chain, `FALAK-T<pid>-<n>` ([`CHAIN_PREFIX`], this process's id,
//!   a counter), holding four `DROP` rules (each port as destination and as source), jumped to
//!   from the top of `INPUT` once the chain is complete, so the cut starts at once. Healing
//!   deletes the jump first, so it also ends at once.
//! - On loopback every datagram passes `INPUT` exactly once, on its way in to the receiving
//!   socket, whoever sent it. Matching the node's ports as destination drops what it would
//!   receive; matching them as source drops what it sends, because both of its UDP users send
//!   from the port they listen on: the QUIC endpoint (`falak-transport` binds one socket and
//!   dials from the same `Endpoint` it serves on) and the membership driver (one socket).
//! - `OUTPUT` is left alone on purpose: dropping there makes the sender's `sendto` fail with
//!   `EPERM`, which a real partition never does (datagrams vanish on the way) and which the
//!   drivers would log and count as errors.
//!
//! Cleanup: [`Isolation::heal`] and `Drop` (so also a panic unwinding through the owner) remove
//! the jump and the chain. A process killed outright leaves its chain behind; every new
//! isolation first removes the chains of processes that are gone ([`sweep`]).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use falak_node::config::NodeConfigDocument;

use crate::mesh::{Mesh, Node};

/// The name of every chain this module makes starts with this, then `<pid>-<n>`.
pub const CHAIN_PREFIX: &str = "FALAK-T";

/// The built-in chain the isolation chains are jumped to from.
const HOOK: &str = "INPUT";

/// Numbers this process's chains.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A node cut off the network; healed by [`Isolation::heal`] or when dropped.
#[derive(Debug)]
pub struct Isolation {
    chain: String,
    /// What is cut off, for messages: `node-1 (udp ports 40001, 40002)`.
    what: String,
    /// Set once the rules are gone, so `Drop` has nothing left to do.
    removed: bool,
}

/// Datagrams one rule of an isolation dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub port: u16,
    /// Addressed to the isolated port (`true`) or sent from it (`false`).
    pub inbound: bool,
    pub packets: u64,
}

impl Isolation {
    /// Cut node `i` of `mesh` off: its transport and gossip ports, from its `node.yaml`.
    pub fn node(mesh: &Mesh, i: usize) -> Result<Isolation> {
        let node = mesh.nodes.get(i).with_context(|| format!("no node {i} in a mesh of {}", mesh.nodes.len()))?;
        Isolation::ports(&node.name, &udp_ports(node)?)
    }

    /// Drop every UDP datagram to or from `ports` on loopback; `name` names them in messages.
    pub fn ports(name: &str, ports: &[u16]) -> Result<Isolation> {
        if ports.is_empty() {
            bail!("isolating {name}: no port given");
        }
        check_prerequisites()?;
        sweep().with_context(|| format!("isolating {name}: removing chains left by earlier runs"))?;
        let chain = format!("{CHAIN_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let what = format!("{name} (udp ports {})", list.join(", "));
        iptables(&["-N", &chain]).with_context(|| format!("isolating {what}"))?;
        // From here on the guard owns the chain: an error below removes what was added.
        let isolation = Isolation { chain, what, removed: false };
        for port in &list {
            for direction in ["--dport", "--sport"] {
                isolation.add(&["-i", "lo", "-p", "udp", direction, port, "-j", "DROP"])?;
            }
        }
        iptables(&["-I", HOOK, "1", "-j", &isolation.chain])
            .with_context(|| format!("isolating {}: jumping to {}", isolation.what, isolation.chain))?;
        Ok(isolation)
    }

    /// The chain holding the rules.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Datagrams dropped so far, per port and direction.
    pub fn dropped(&self) -> Result<Vec<Dropped>> {
        let listing = iptables(&["-L", &self.chain, "-v", "-n", "-x"])?;
        Ok(parse_counters(&listing))
    }

    /// Remove every rule and the chain: the node is reachable again.
    pub fn heal(mut self) -> Result<()> {
        remove_chain(&self.chain).with_context(|| format!("healing {}", self.what))?;
        self.removed = true;
        Ok(())
    }

    fn add(&self, rule: &[&str]) -> Result<()> {
        let mut args = vec!["-A", self.chain.as_str()];
        args.extend_from_slice(rule);
        iptables(&args).map(drop).with_context(|| format!("isolating {}", self.what))
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(e) = remove_chain(&self.chain) {
            // Nowhere to return it; the next isolation's sweep retries once this process is gone.
            eprintln!(
                "netfilter: could not remove chain {} ({}): {e:#}; remove it with `iptables -D {HOOK} -j {0}; iptables -F {0}; iptables -X {0}`",
                self.chain, self.what
            );
        }
    }
}

/// Remove the chains, and the jumps to them, that processes no longer alive left behind (a test
/// or benchmark killed before it could heal). Chains of live processes are left alone. Returns
/// the names of the chains removed.
pub fn sweep() -> Result<Vec<String>> {
    let rules = iptables(&["-S"])?;
    let mut removed = Vec::new();
    for chain in chains(&rules) {
        let Some(pid) = owner(chain) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_chain(chain).with_context(|| format!("removing {chain}, left by process {pid}"))?;
        removed.push(chain.to_owned());
    }
    Ok(removed)
}

/// The names of every chain with [`CHAIN_PREFIX`] in the filter table, whoever made it.
pub fn leftover_chains() -> Result<Vec<String>> {
    Ok(chains(&iptables(&["-S"])?).map(str::to_owned).collect())
}

/// The transport and gossip ports of `node`, from the config it runs with.
fn udp_ports(node: &Node) -> Result<Vec<u16>> {
    let text = std::fs::read_to_string(&node.config).with_context(|| format!("reading {:?}", node.config))?;
    let doc: NodeConfigDocument = yaml_serde::from_str(&text).with_context(|| format!("parsing {:?}", node.config))?;
    let transport = doc.transport_addr.with_context(|| format!("{:?} names no transport_addr", node.config))?;
    let gossip = doc.gossip_addr.with_context(|| format!("{:?} names no gossip_addr", node.config))?;
    // iptables rules are IPv4 only.
    let v4_loopback = |a: std::net::SocketAddr| a.is_ipv4() && a.ip().is_loopback();
    if !v4_loopback(transport) || !v4_loopback(gossip) {
        bail!("{} does not listen on IPv4 loopback (transport {transport}, gossip {gossip})", node.name);
    }
    Ok(vec![transport.port(), gossip.port()])
}

/// Root, and an `iptables` that can read the filter table; an error saying which is missing.
fn check_prerequisites() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        bail!(
            "isolating a node needs root: it adds iptables rules, and this process runs as uid {uid}; run the partition tests and the heal benchmark as root (CI does)"
        );
    }
    iptables(&["-S", HOOK]).map(drop)
}

/// Run `iptables -w ARGS` (wait for the xtables lock under the legacy backend); its stdout.
fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables").arg("-w").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "iptables is not installed (not found on PATH): the partition tests and the heal benchmark need it to cut nodes off (apt-get install iptables)"
            )
        } else {
            anyhow!("cannot run iptables: {e}")
        }
    })?;
    if !out.status.success() {
        bail!(
            "`iptables -w {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Delete every jump to `chain` from a built-in chain, then the chain; what is already gone is
/// skipped, so this may be called again after a partial failure.
fn remove_chain(chain: &str) -> Result<()> {
    let rules = iptables(&["-S"])?;
    for rule in rules.lines().filter_map(|l| l.strip_prefix("-A ")) {
        let words: Vec<&str> = rule.split_whitespace().collect();
        if words.first() != Some(&chain) && words.ends_with(&["-j", chain]) {
            let mut args = vec!["-D"];
            args.extend_from_slice(&words);
            iptables(&args)?;
        }
    }
    if rules.lines().any(|l| l.strip_prefix("-N ") == Some(chain)) {
        iptables(&["-F", chain])?;
        iptables(&["-X", chain])?;
    }
    Ok(())
}

/// The chains named with [`CHAIN_PREFIX`] in `iptables -S` output.
fn chains(rules: &str) -> impl Iterator<Item = &str> {
    rules.lines().filter_map(|l| l.strip_prefix("-N ")).map(str::trim).filter(|c| c.starts_with(CHAIN_PREFIX))
}

/// The process id in a chain name `FALAK-T<pid>-<n>`.
fn owner(chain: &str) -> Option<u32> {
    let (pid, n) = chain.strip_prefix(CHAIN_PREFIX)?.split_once('-')?;
    n.parse::<usize>().ok()?;
    pid.parse().ok()
}

/// Per-rule counters from `iptables -L CHAIN -v -n -x`: lines of `pkts bytes target prot opt in
/// out source destination udp dpt:N` (or `spt:N`) after two header lines.
fn parse_counters(listing: &str) -> Vec<Dropped> {
    let mut out = Vec::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(packets) = words.first().and_then(|w| w.parse::<u64>().ok()) else { continue };
        let port = |prefix: &str| words.iter().find_map(|w| w.strip_prefix(prefix)?.parse::<u16>().ok());
        if let Some(port) = port("dpt:") {
            out.push(Dropped { port, inbound: true, packets });
        } else if let Some(port) = port("spt:") {
            out.push(Dropped { port, inbound: false, packets });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_carry_their_owner() {
        assert_eq!(owner("FALAK-T1234-0"), Some(1234));
        assert_eq!(owner("FALAK-T1234-17"), Some(1234));
        assert_eq!(owner("FALAK-T1234"), None);
        assert_eq!(owner("FALAK-Tx-1"), None);
        assert_eq!(owner("DOCKER-USER"), None);
        let rules = "-P INPUT ACCEPT\n-N FALAK-T1-0\n-N OTHER\n-A INPUT -j FALAK-T1-0\n";
        assert_eq!(chains(rules).collect::<Vec<_>>(), ["FALAK-T1-0"]);
    }

    #[test]
    fn counters_from_a_listing() {
        let listing = "Chain FALAK-T1-0 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      12      960 DROP       17   --  lo     *       0.0.0.0/0            0.0.0.0/0            udp dpt:40001
       3      240 DROP       17   --  lo     *       0.0.0.0/0            0.0.0.0/0            udp spt:40001
";
        assert_eq!(
            parse_counters(listing),
            [Dropped { port: 40001, inbound: true, packets: 12 }, Dropped { port: 40001, inbound: false, packets: 3 }]
        );
    }
}
