//! `falak explain TASK`: why a task runs where it runs, or why it runs nowhere yet.

use clap::Args;
use falak_api::task::DecisionInfo;
use falak_core::job::TaskId;

use super::Context;
use super::job::parse_task_id;
use super::output::{Table, print_json};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The task, e.g. `j3-t0`.
    #[arg(value_parser = parse_task_id)]
    pub task: TaskId,
}

pub async fn run(ctx: &Context, args: ExplainArgs) -> anyhow::Result<()> {
    let decision = ctx.client.decision(args.task).await?;
    if ctx.json() {
        return print_json(&decision);
    }
    print!("{}", render(&decision));
    Ok(())
}

/// The decision as a header, a table of every candidate's terms (value × weight) and a line per
/// losing candidate saying why it lost.
pub fn render(d: &DecisionInfo) -> String {
    let mut out =
        format!("task {}  attempt {}  {}  strategy {}\n", d.task, d.attempt, d.state.name(), d.strategy.name());
    if d.live {
        out.push_str("live: no election has been won for this attempt; this is what placement computes now\n");
    }
    out.push_str(&d.summary);
    out.push_str("\n\n");
    if d.candidates.is_empty() {
        out.push_str("no candidates\n");
        return out;
    }
    let term_names: Vec<String> = d.candidates[0].terms.iter().map(|t| t.name.clone()).collect();
    let mut header = vec!["RANK".to_owned(), "NODE".to_owned(), "FITS".to_owned(), "GRAVITY".to_owned()];
    header.extend(term_names.iter().map(|n| n.to_uppercase()));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    let mut rank = 0;
    for c in &d.candidates {
        let rank_text = if c.fits {
            rank += 1;
            rank.to_string()
        } else {
            "-".to_owned()
        };
        let mut row = vec![
            if c.winner { format!("{rank_text} *") } else { rank_text },
            c.name.clone(),
            if c.fits { "yes" } else { "no" }.to_owned(),
            format!("{:.3}", c.gravity),
        ];
        for name in &term_names {
            let cell =
                c.terms.iter().find(|t| &t.name == name).map_or("-".to_owned(), |t| format!("{:.3}", t.contribution));
            row.push(cell);
        }
        table.row(row);
    }
    out.push_str(&table.render());
    let weights: Vec<String> = d.candidates[0].terms.iter().map(|t| format!("{} {}", t.name, t.weight)).collect();
    out.push_str(&format!(
        "\n* = {}; each term is value × weight, weights for {}: {}\n",
        if d.live { "ranks first" } else { "winner" },
        d.strategy.name(),
        weights.join(", ")
    ));
    let losers: Vec<(&str, &str)> =
        d.candidates.iter().filter_map(|c| Some((c.name.as_str(), c.why_not.as_deref()?))).collect();
    if !losers.is_empty() {
        out.push_str(if d.live { "\nwhy not the others:\n" } else { "\nwhy not:\n" });
        let width = losers.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
        for (name, why) in losers {
            out.push_str(&format!("  {name:<width$}  {why}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use falak_api::node::NodeRef;
    use falak_api::task::{CandidateInfo, TermInfo};
    use falak_core::NodeId;
    use falak_core::job::{JobId, TaskState};
    use falak_core::placement::Strategy;

    use super::*;

    fn candidate(n: u8, gravity: f64, fits: bool, winner: bool, why_not: Option<&str>) -> CandidateInfo {
        let term = |name: &str, value: f64, weight: f64| TermInfo {
            name: name.into(),
            value,
            weight,
            contribution: value * weight,
        };
        CandidateInfo {
            node: NodeId([n; 32]),
            name: format!("node-{n}"),
            fits,
            reason: (!fits).then(|| "needs 500 millicores, only 200 free".to_owned()),
            gravity,
            terms: vec![term("capacity", gravity / 2.0, 1.0), term("load", gravity / 4.0, 2.0)],
            winner,
            why_not: why_not.map(str::to_owned),
        }
    }

    #[test]
    fn explain_table() {
        let decision = DecisionInfo {
            task: TaskId { job: JobId(3), index: 0 },
            attempt: 1,
            state: TaskState::Running,
            strategy: Strategy::Balanced,
            winner: Some(NodeRef { id: NodeId([1; 32]), name: "node-1".into() }),
            live: false,
            decided_at: Some(0),
            summary: "node-1 won attempt 1 with gravity 3.000 among 3 candidates (2 fit)".into(),
            candidates: vec![
                candidate(1, 3.0, true, true, None),
                candidate(
                    2,
                    2.0,
                    true,
                    false,
                    Some("gravity 2.000 vs 3.000 for node-1 (-1.000): lower capacity -0.500"),
                ),
                candidate(3, 1.0, false, false, Some("does not fit: needs 500 millicores, only 200 free")),
            ],
        };
        expect_test::expect![[r#"
            task j3-t0  attempt 1  RUNNING  strategy balanced
            node-1 won attempt 1 with gravity 3.000 among 3 candidates (2 fit)

            RANK  NODE    FITS  GRAVITY  CAPACITY  LOAD
            1 *   node-1  yes   3.000    1.500     1.500
            2     node-2  yes   2.000    1.000     1.000
            -     node-3  no    1.000    0.500     0.500

            * = winner; each term is value × weight, weights for balanced: capacity 1, load 2

            why not:
              node-2  gravity 2.000 vs 3.000 for node-1 (-1.000): lower capacity -0.500
              node-3  does not fit: needs 500 millicores, only 200 free
        "#]]
        .assert_eq(&render(&decision));
    }
}
