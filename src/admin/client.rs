//! `floodgate accounts …`: the accounts API called from a shell, for people (a billing system
//! calls the HTTP API itself). It talks to a running floodgate's admin listener: the address
//! from `--admin` / `FLOODGATE_ADMIN` (else the config's `[server] admin`), the token from
//! `--token-file` / `FLOODGATE_ADMIN_TOKEN_FILE` (else the config's `admin_token`). The
//! answer's JSON goes to stdout; an error's to stderr, with a failing exit status.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// What to do to an account.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AccountsCommand {
    /// Show an account: tier, runtime changes, block, usage, latest changes.
    Get {
        #[command(flatten)]
        account: Which,
    },
    /// List the accounts nearest their limits (`--sort usage`) or those changed at runtime.
    List {
        #[arg(long, default_value = "usage")]
        sort: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Change an account's plan, limits or job caps (only the options given change).
    Set {
        #[command(flatten)]
        account: Which,
        /// A tier of the config.
        #[arg(long)]
        tier: Option<String>,
        /// Limit entries as JSON, shaped like `[[tiers.NAME.limits]]`:
        /// '[{"classes": ["txt2img"], "per_minute": 20}]'.
        #[arg(long)]
        limits: Option<String>,
        #[arg(long)]
        concurrency: Option<u32>,
        #[arg(long)]
        max_queue: Option<u32>,
    },
    /// Refuse every request of the account (403 account_blocked).
    Block {
        #[command(flatten)]
        account: Which,
        #[arg(long)]
        reason: String,
        /// When the block ends, RFC 3339 (e.g. 2027-01-01T00:00:00Z); without it, until lifted.
        #[arg(long)]
        until: Option<String>,
    },
    /// Lift a block.
    Unblock {
        #[command(flatten)]
        account: Which,
    },
    /// Drop every runtime change: back to what the config says.
    Clear {
        #[command(flatten)]
        account: Which,
    },
    /// Zero windows now (an incident refund).
    Reset {
        #[command(flatten)]
        account: Which,
        /// Windows to zero: "all", or a comma-separated list (minute,daily,...).
        #[arg(long, default_value = "all")]
        windows: String,
        /// Also zero today's incorrect tasks and relax jobs used.
        #[arg(long)]
        penalties: bool,
    },
    /// Give units back in a class's open window (a partial refund).
    Grant {
        #[command(flatten)]
        account: Which,
        #[arg(long)]
        class: String,
        /// second, minute, hour, daily, monthly or interval.
        #[arg(long)]
        window: String,
        #[arg(long)]
        units: u32,
    },
}

/// The account: its id (or a prefix of 8+ hex digits, or a name) or its API key.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// The account id as `/usage` and the status page show it, or an [account_names] name.
    #[arg(required_unless_present = "key")]
    account: Option<String>,
    /// The account's API key instead of its id.
    #[arg(long, conflicts_with = "account")]
    key: Option<String>,
}

impl Which {
    /// The account's path under `/accounts`, plus `rest` and the key query.
    fn path(&self, rest: &str) -> String {
        match (&self.key, &self.account) {
            (Some(key), _) => format!("/accounts/by-key{rest}?key={}", encode(key)),
            (None, Some(id)) => format!("/accounts/{}{rest}", encode(id)),
            (None, None) => unreachable!("clap asks for an account or a key"),
        }
    }
}

/// The request a command makes: method, path and JSON body.
pub fn request_of(cmd: &AccountsCommand) -> anyhow::Result<(Method, String, Option<Value>)> {
    use AccountsCommand::*;
    Ok(match cmd {
        Get { account } => (Method::GET, account.path(""), None),
        List {
            sort,
            limit,
            offset,
        } => (
            Method::GET,
            format!(
                "/accounts?sort={}&limit={limit}&offset={offset}",
                encode(sort)
            ),
            None,
        ),
        Set {
            account,
            tier,
            limits,
            concurrency,
            max_queue,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(t) = tier {
                body.insert("tier".into(), json!(t));
            }
            if let Some(l) = limits {
                let parsed: Value = serde_json::from_str(l).context("--limits is not JSON")?;
                body.insert("limits".into(), parsed);
            }
            if let Some(c) = concurrency {
                body.insert("concurrency".into(), json!(c));
            }
            if let Some(m) = max_queue {
                body.insert("max_queue".into(), json!(m));
            }
            if body.is_empty() {
                bail!("give at least one of --tier, --limits, --concurrency, --max-queue");
            }
            (Method::PUT, account.path(""), Some(Value::Object(body)))
        }
        Block {
            account,
            reason,
            until,
        } => (
            Method::PUT,
            account.path(""),
            Some(json!({"blocked": {"reason": reason, "until": until}})),
        ),
        Unblock { account } => (
            Method::PUT,
            account.path(""),
            Some(json!({"blocked": null})),
        ),
        Clear { account } => (Method::DELETE, account.path(""), None),
        Reset {
            account,
            windows,
            penalties,
        } => {
            let windows = match windows.as_str() {
                "all" => json!("all"),
                list => json!(list.split(',').map(str::trim).collect::<Vec<_>>()),
            };
            let body = json!({"windows": windows, "penalties": penalties});
            (Method::POST, account.path("/reset"), Some(body))
        }
        Grant {
            account,
            class,
            window,
            units,
        } => {
            let body = json!({"class": class, "window": window, "units": units});
            (Method::POST, account.path("/grant"), Some(body))
        }
    })
}

/// Percent-encodes what is not safe in a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Sends the command's request to the admin listener at `admin` and returns the status and the
/// answer's body.
pub fn call(
    admin: SocketAddr,
    token: Option<&str>,
    cmd: &AccountsCommand,
) -> anyhow::Result<(u16, String)> {
    let (method, path, body) = request_of(cmd)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        .with_context(|| format!("the admin listener at {admin} did not answer"))?
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(&path)
            .header("host", admin.to_string())
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(Full::new(Bytes::from(body)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .context("the admin listener did not answer in 30 s")??;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let pretty = serde_json::from_str::<Value>(&text)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or(text);
        Ok((status, pretty))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AccountsCommand,
    }

    fn request(args: &[&str]) -> (Method, String, Option<Value>) {
        let cli =
            Cli::try_parse_from(std::iter::once("accounts").chain(args.iter().copied())).unwrap();
        request_of(&cli.cmd).unwrap()
    }

    #[test]
    fn commands_become_the_api_requests() {
        let (m, p, b) = request(&["set", "a1b2c3d4", "--tier", "pro", "--concurrency", "3"]);
        assert_eq!((m, p.as_str()), (Method::PUT, "/accounts/a1b2c3d4"));
        assert_eq!(b.unwrap(), json!({"tier": "pro", "concurrency": 3}));
        let (m, p, b) = request(&["block", "--key", "sk live/1", "--reason", "unpaid"]);
        assert_eq!(
            (m, p.as_str()),
            (Method::PUT, "/accounts/by-key?key=sk%20live%2F1")
        );
        assert_eq!(
            b.unwrap(),
            json!({"blocked": {"reason": "unpaid", "until": null}})
        );
        let (m, p, b) = request(&["reset", "acct", "--windows", "minute, daily"]);
        assert_eq!((m, p.as_str()), (Method::POST, "/accounts/acct/reset"));
        assert_eq!(b.unwrap()["windows"], json!(["minute", "daily"]));
        let (m, p, _) = request(&["clear", "acct"]);
        assert_eq!((m, p.as_str()), (Method::DELETE, "/accounts/acct"));
        let cli = Cli::try_parse_from(["accounts", "set", "acct"]).unwrap();
        assert!(request_of(&cli.cmd).is_err(), "a set with nothing to set");
        assert!(
            Cli::try_parse_from(["accounts", "get"]).is_err(),
            "no account"
        );
    }
}
