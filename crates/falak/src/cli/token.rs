//! `falak token create --role ROLE [--ttl DURATION] [--rate-limit N] NAME | list | revoke ID`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use falak_api::token::{CreateToken, TokenInfo};
use falak_core::access::{Role, TokenId};

use super::Context;
use super::output::{Table, or_dash, print_json, timestamp};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it; it is shown only this once.
    Create {
        /// What the token is for, e.g. `ci-deployer`.
        name: String,
        /// admin (everything), deploy (workloads and functions), invoke (call functions) or
        /// read (look, change nothing).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Refuse the token after this long, e.g. `12h`, `30d` [default: never].
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Requests per second on each node, bursts of twice that; 0 for no limit [default:
        /// the node's, 1000].
        #[arg(long)]
        rate_limit: Option<u32>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token for good: every node refuses it from the moment the revocation commits.
    Revoke {
        /// The token's id (the 16 hex characters after `falak-token-v1.`), as `list` shows it.
        #[arg(value_parser = parse_token_id)]
        id: TokenId,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

fn parse_token_id(text: &str) -> Result<TokenId, String> {
    // Accept a whole token too: revoking the token you hold should not need surgery.
    let id =
        text.strip_prefix(falak_core::access::TOKEN_PREFIX).map_or(text, |rest| rest.split('.').next().unwrap_or(""));
    id.parse()
}

pub async fn run(ctx: &Context, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, ttl, rate_limit } => {
            let ttl_seconds = ttl.map(|t| t.as_secs().max(1));
            let request = CreateToken { name, role, ttl_seconds, rate_limit };
            let created = ctx.client.create_token(&request).await.context("cannot create the token")?;
            if ctx.json() {
                return print_json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "token {} ({}, role {}{}): store it now, it is not shown again",
                created.info.id,
                created.info.name,
                created.info.role,
                created.info.expires_at.map(|at| format!(", expires {}", timestamp(at))).unwrap_or_default()
            );
            Ok(())
        }
        TokenCommand::List => {
            let tokens = ctx.client.tokens().await?;
            if ctx.json() {
                return print_json(&tokens);
            }
            print!("{}", render_list(&tokens));
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let token = ctx.client.revoke_token(id).await?;
            if ctx.json() {
                return print_json(&token);
            }
            println!("revoked token {} ({})", token.id, token.name);
            Ok(())
        }
    }
}

pub fn render_list(tokens: &[TokenInfo]) -> String {
    let mut table = Table::new(&["ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "RATE"]);
    for t in tokens {
        let rate = match t.rate_limit {
            Some(0) => "unlimited".to_owned(),
            Some(n) => format!("{n}/s"),
            None => "default".to_owned(),
        };
        table.row(vec![
            t.id.to_string(),
            t.name.clone(),
            t.role.to_string(),
            t.state.clone(),
            timestamp(t.created_at),
            or_dash(t.expires_at.map(timestamp)),
            rate,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_token_or_its_id_names_it() {
        let id = "0102030405060708";
        assert_eq!(parse_token_id(id).unwrap().to_string(), id);
        let whole = format!("falak-token-v1.{id}.{}", "ab".repeat(32));
        assert_eq!(parse_token_id(&whole).unwrap().to_string(), id);
        assert!(parse_token_id("nope").is_err());
    }
}
