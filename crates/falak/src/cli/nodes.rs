//! `falak nodes`: the mesh's nodes as the answering node sees them.

use falak_api::node::NodeInfo;
use falak_core::node::Namespaces;

use super::Context;
use super::output::{Table, bytes, cpu, labels, print_json};

pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let nodes = ctx.client.nodes().await?;
    if ctx.json() {
        return print_json(&nodes);
    }
    print!("{}", render(&nodes));
    Ok(())
}

/// One row per node: free resources over capacity, tasks, role, the namespaces it gives
/// workloads and round-trip time; then a note for each node that cannot create namespaces.
pub fn render(nodes: &[NodeInfo]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "ROLE",
        "NAMESPACES",
        "CPU FREE",
        "MEMORY FREE",
        "RUNNING",
        "QUEUED",
        "RTT",
        "COST/H",
        "LABELS",
        "ID",
    ]);
    for n in nodes {
        let role = match (n.leader, n.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "-",
        };
        table.row(vec![
            n.name.clone(),
            n.state.name().to_owned(),
            role.to_owned(),
            n.namespaces.map_or("-", Namespaces::name).to_owned(),
            format!("{}/{}", cpu(n.free_cpu_millis), cpu(n.capacity.cpu_millis)),
            format!("{}/{}", bytes(n.free_memory_bytes), bytes(n.capacity.memory_bytes)),
            n.running.to_string(),
            n.queued.to_string(),
            n.rtt_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms")),
            format!("{:.2}", n.cost_per_hour),
            labels(&n.labels),
            n.id.short(),
        ]);
    }
    let mut out = table.render();
    let unable: Vec<&str> =
        nodes.iter().filter(|n| n.namespaces == Some(Namespaces::Unavailable)).map(|n| n.name.as_str()).collect();
    if !unable.is_empty() {
        out.push_str(&unable_note(&unable));
    }
    out
}

/// What it means that the nodes `names` cannot create namespaces, and where to find why.
pub fn unable_note(names: &[&str]) -> String {
    let [they, them, their, says] = if names.len() == 1 {
        ["it", "it", "its", "its log says"]
    } else {
        ["they", "them", "their", "their logs say"]
    };
    format!(
        "note: {} cannot create namespaces: {they} cannot run capsules with `network: none` (the default), and \
         workloads on {them} see {their} files and network; {says} why and what to change\n",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use falak_core::NodeId;
    use falak_core::placement::Health;
    use falak_core::resources::Resources;

    use super::*;

    #[test]
    fn nodes_table() {
        let node = |n: u8, name: &str, leader: bool| NodeInfo {
            id: NodeId([n; 32]),
            name: name.into(),
            state: if n == 3 { Health::Suspect } else { Health::Healthy },
            labels: BTreeMap::from([("zone".into(), format!("z{n}"))]),
            capacity: Resources::new(4000, 8 << 30),
            free_cpu_millis: 3500,
            free_memory_bytes: 6 << 30,
            running: 1,
            queued: u32::from(n == 2),
            voter: n < 3,
            leader,
            rtt_ms: (n > 1).then_some(0.42),
            api_url: format!("http://127.0.0.1:{}", 7070 + u16::from(n)),
            cost_per_hour: 0.5,
            namespaces: Some([Namespaces::Privileged, Namespaces::User, Namespaces::Unavailable][usize::from(n - 1)]),
        };
        let text = render(&[node(1, "node-1", true), node(2, "node-2", false), node(3, "edge-box", false)]);
        expect_test::expect![[r#"
            NAME      STATE    ROLE    NAMESPACES   CPU FREE  MEMORY FREE  RUNNING  QUEUED  RTT    COST/H  LABELS   ID
            node-1    HEALTHY  leader  privileged   3.5/4     6Gi/8Gi      1        0       -      0.50    zone=z1  01010101
            node-2    HEALTHY  voter   user         3.5/4     6Gi/8Gi      1        1       0.4ms  0.50    zone=z2  02020202
            edge-box  SUSPECT  -       unavailable  3.5/4     6Gi/8Gi      1        0       0.4ms  0.50    zone=z3  03030303
            note: edge-box cannot create namespaces: it cannot run capsules with `network: none` (the default), and workloads on it see its files and network; its log says why and what to change
        "#]]
        .assert_eq(&text);
    }
}
