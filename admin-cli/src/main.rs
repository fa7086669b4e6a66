//! `keyplanectl`: every admin task of Keyplane over gRPC.
//!
//! Tables for people, `--json` for scripts. Exit codes: 0 success, 1 the server refused (the
//! reason on stderr), 2 a usage error or an unreachable server.

mod output;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyplane_proto::MAX_MESSAGE_BYTES;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::admin_client::AdminClient;
use output::Output;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

#[derive(Parser, Debug)]
#[command(
    name = "keyplanectl",
    version,
    about = "Administer a Keyplane control plane"
)]
struct Cli {
    /// Control plane gRPC URL.
    #[arg(
        long,
        env = "KEYPLANE_CONTROL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    control: String,
    /// Admin token (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        env = "KEYPLANE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upstream providers.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// Upstream credentials (API keys); secrets are read from stdin.
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Client-facing models and their offerings.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Client keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Usage totals per key, model, provider and credential.
    Usage {
        /// Only this client key (by name).
        #[arg(long)]
        key: Option<String>,
        /// Only requests started at or after this time (RFC 3339, or YYYY-MM-DD in UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only requests started before this time (RFC 3339, or YYYY-MM-DD in UTC).
        #[arg(long)]
        until: Option<String>,
        /// Group by key, model, provider, credential or day.
        #[arg(long)]
        by: Option<String>,
    },
    /// Fallback chains: a name that tries model after model.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Data planes known to the control plane.
    Nodes,
}

#[derive(Subcommand, Debug)]
enum ProviderCmd {
    /// Add a provider. Works whether or not the provider is reachable.
    Add {
        name: String,
        /// openai or anthropic.
        #[arg(long)]
        protocol: String,
        /// OpenAI-style URLs end in /v1; Anthropic's do not.
        #[arg(long)]
        base_url: String,
        #[command(flatten)]
        timeouts: TimeoutFlags,
    },
    /// List providers.
    List,
    /// Change a provider's timeouts (0: back to the data plane's default).
    Set {
        name: String,
        #[command(flatten)]
        timeouts: TimeoutFlags,
    },
}

#[derive(clap::Args, Debug)]
struct TimeoutFlags {
    /// Upstream connect timeout in ms (default: the data plane's --connect-timeout-ms).
    #[arg(long)]
    connect_timeout_ms: Option<u32>,
    /// Time to response headers / first streamed content in ms.
    #[arg(long)]
    first_byte_timeout_ms: Option<u32>,
    /// Longest silence between two chunks in ms.
    #[arg(long)]
    idle_timeout_ms: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum ChainCmd {
    /// Create or replace a chain.
    Set {
        name: String,
        /// Models in order, comma-separated.
        #[arg(long, required = true)]
        models: String,
    },
    /// List chains.
    List,
    /// Delete a chain.
    Delete { name: String },
}

/// A key's limits; on `key set`, only the flags given change (0 or "" clears a limit).
#[derive(clap::Args, Debug)]
struct PolicyFlags {
    /// Budget in USD per period (billed cost).
    #[arg(long)]
    budget_usd: Option<String>,
    /// Budget in tokens (input + output) per period.
    #[arg(long)]
    budget_tokens: Option<u64>,
    /// daily, weekly, monthly (UTC calendar) or total.
    #[arg(long)]
    period: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Comma-separated globs of allowed models, e.g. 'gpt-4o*,claude-*'.
    #[arg(long)]
    models: Option<String>,
    /// Expiry time, RFC 3339 (e.g. 2026-12-31T00:00:00Z); "" clears.
    #[arg(long)]
    expires: Option<String>,
}

impl PolicyFlags {
    fn input(self) -> Result<pb::KeyPolicyInput, Failure> {
        let expires_at_ms = match self.expires.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(0),
            Some(text) => Some(parse_time(text, "--expires")?),
        };
        Ok(pb::KeyPolicyInput {
            budget_usd: self.budget_usd,
            budget_tokens: self.budget_tokens,
            period: self.period,
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
            models: self.models,
            expires_at_ms,
        })
    }
}

/// RFC 3339 (or a bare `YYYY-MM-DD`, midnight UTC) to Unix ms.
fn parse_time(text: &str, flag: &str) -> Result<i64, Failure> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&full)
        .or_else(|_| humantime::parse_rfc3339(&full))
        .map_err(|e| Failure::Usage(format!("{flag} {text:?} is not an RFC 3339 time: {e}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Failure::Usage(format!("{flag} {text:?} is before 1970")))?
        .as_millis();
    Ok(ms.min(i64::MAX as u128) as i64)
}

#[derive(Subcommand, Debug)]
enum CredentialCmd {
    /// Add a credential; the secret is read from stdin (one line) and never printed.
    Add {
        provider: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Cost multiplier for this credential (e.g. 0.8 for a discount).
        #[arg(long, allow_hyphen_values = true)]
        multiplier: Option<String>,
        /// When the upstream's quota resets (daily, weekly, monthly; UTC): an `exhausted`
        /// credential comes back by itself then.
        #[arg(long)]
        quota_resets: Option<String>,
    },
    /// List credentials (never their secrets).
    List {
        #[arg(long)]
        provider: Option<String>,
    },
    /// Clear a credential's health state (cooldown, invalid, exhausted, open circuit).
    Enable { id: String },
}

#[derive(Subcommand, Debug)]
enum ModelCmd {
    /// Set a provider's offering of a model, with prices in USD per million tokens.
    Set {
        /// Client-facing model name.
        model: String,
        #[arg(long)]
        provider: String,
        /// The provider's id for the model; defaults to MODEL.
        #[arg(long)]
        upstream_model: Option<String>,
        /// Input price, USD per million tokens.
        #[arg(long, allow_hyphen_values = true)]
        input: String,
        /// Output price, USD per million tokens.
        #[arg(long, allow_hyphen_values = true)]
        output: String,
        /// Price of cached input read, USD per million tokens (default: the input price).
        #[arg(long, allow_hyphen_values = true)]
        cache_read: Option<String>,
        /// Price of cached input written, USD per million tokens (default: the input price).
        #[arg(long, allow_hyphen_values = true)]
        cache_write: Option<String>,
    },
    /// List model offerings.
    List {
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create a client key; it is printed once and cannot be shown again.
    Create {
        name: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// Change a key's limits; only the flags given change.
    Set {
        name: String,
        #[command(flatten)]
        policy: PolicyFlags,
    },
    /// List client keys (never the keys themselves).
    List,
    /// Revoke a client key; data planes refuse it within a second.
    Revoke { name: String },
}

/// Why the command failed, and so its exit code.
enum Failure {
    /// The server answered with a refusal: exit 1.
    Refused(Status),
    /// Bad usage or no server to talk to: exit 2.
    Usage(String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure::Refused(status)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keyplanectl: cannot start: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("keyplanectl: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(status)) if status.code() == Code::Unavailable => {
            eprintln!(
                "keyplanectl: control plane unavailable: {}",
                status.message()
            );
            ExitCode::from(2)
        }
        Err(Failure::Refused(status)) => {
            eprintln!(
                "keyplanectl: {}: {}",
                describe(status.code()),
                status.message()
            );
            ExitCode::from(1)
        }
    }
}

fn describe(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::Internal => "control plane error",
        _ => "refused",
    }
}

/// A connected client that adds the admin token to every call.
struct Admin {
    client: AdminClient<Channel>,
    token: String,
}

impl Admin {
    fn request<T>(&self, message: T) -> Result<Request<T>, Failure> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.token).parse().map_err(|_| {
            Failure::Usage("the admin token has characters not allowed in a header".into())
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

async fn connect(cli: &Cli) -> Result<Admin, Failure> {
    let token = cli.token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::Usage("no admin token: set KEYPLANE_ADMIN_TOKEN or pass --token".into())
    })?;
    let endpoint = Endpoint::from_shared(cli.control.clone())
        .map_err(|e| {
            Failure::Usage(format!(
                "--control {:?} is not a valid URL: {e}",
                cli.control
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::Usage(format!(
            "cannot reach the control plane at {}: {}",
            cli.control,
            source_chain(&e)
        ))
    })?;
    let client = AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Admin { client, token })
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads the secret: one line from stdin, without its line ending. On a terminal, without echo.
fn read_secret(provider: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return rpassword::prompt_password(format!("secret for {provider}: "))
            .map_err(|e| Failure::Usage(format!("cannot read the secret: {e}")));
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the secret from stdin")
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let secret = line.strip_suffix('\n').unwrap_or(&line);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    Ok(secret.to_string())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Output { json: cli.json };
    // Read the secret before connecting, so a usage problem is reported first.
    let secret = match &cli.command {
        Command::Credential(CredentialCmd::Add { provider, .. }) => Some(read_secret(provider)?),
        _ => None,
    };
    let mut admin = connect(&cli).await?;
    match cli.command {
        Command::Provider(ProviderCmd::Add {
            name,
            protocol,
            base_url,
            timeouts,
        }) => {
            let req = admin.request(pb::AddProviderRequest {
                name,
                protocol,
                base_url,
                connect_timeout_ms: timeouts.connect_timeout_ms.unwrap_or(0),
                first_byte_timeout_ms: timeouts.first_byte_timeout_ms.unwrap_or(0),
                idle_timeout_ms: timeouts.idle_timeout_ms.unwrap_or(0),
            })?;
            let provider = admin.client.add_provider(req).await?.into_inner();
            out.providers(&[provider], true);
        }
        Command::Provider(ProviderCmd::List) => {
            let req = admin.request(pb::ListProvidersRequest {})?;
            let list = admin.client.list_providers(req).await?.into_inner();
            out.providers(&list.providers, false);
        }
        Command::Credential(CredentialCmd::Add {
            provider,
            label,
            multiplier,
            quota_resets,
        }) => {
            let req = admin.request(pb::AddCredentialRequest {
                provider,
                label,
                multiplier: multiplier.unwrap_or_default(),
                secret: secret.unwrap_or_default(),
                quota_resets: quota_resets.unwrap_or_default(),
            })?;
            let credential = admin.client.add_credential(req).await?.into_inner();
            out.credentials(&[credential], true);
        }
        Command::Credential(CredentialCmd::List { provider }) => {
            let req = admin.request(pb::ListCredentialsRequest {
                provider: provider.unwrap_or_default(),
            })?;
            let list = admin.client.list_credentials(req).await?.into_inner();
            out.credentials(&list.credentials, false);
        }
        Command::Model(ModelCmd::Set {
            model,
            provider,
            upstream_model,
            input,
            output,
            cache_read,
            cache_write,
        }) => {
            let req = admin.request(pb::SetModelRequest {
                model,
                provider,
                upstream_model: upstream_model.unwrap_or_default(),
                input_usd_per_mtok: input,
                output_usd_per_mtok: output,
                cache_read_usd_per_mtok: cache_read.unwrap_or_default(),
                cache_write_usd_per_mtok: cache_write.unwrap_or_default(),
            })?;
            let offering = admin.client.set_model(req).await?.into_inner();
            out.offerings(&[offering], true);
        }
        Command::Model(ModelCmd::List { model }) => {
            let req = admin.request(pb::ListModelsRequest {
                model: model.unwrap_or_default(),
            })?;
            let list = admin.client.list_models(req).await?.into_inner();
            out.offerings(&list.offerings, false);
        }
        Command::Provider(ProviderCmd::Set { name, timeouts }) => {
            let req = admin.request(pb::SetProviderRequest {
                name,
                connect_timeout_ms: timeouts.connect_timeout_ms,
                first_byte_timeout_ms: timeouts.first_byte_timeout_ms,
                idle_timeout_ms: timeouts.idle_timeout_ms,
            })?;
            let provider = admin.client.set_provider(req).await?.into_inner();
            out.providers(&[provider], true);
        }
        Command::Credential(CredentialCmd::Enable { id }) => {
            let req = admin.request(pb::EnableCredentialRequest { id })?;
            let credential = admin.client.enable_credential(req).await?.into_inner();
            out.credentials(&[credential], true);
        }
        Command::Chain(ChainCmd::Set { name, models }) => {
            let req = admin.request(pb::SetChainRequest {
                name,
                models: vec![models],
            })?;
            let chain = admin.client.set_chain(req).await?.into_inner();
            out.chains(&[chain], true);
        }
        Command::Chain(ChainCmd::List) => {
            let req = admin.request(pb::ListChainsRequest {})?;
            let list = admin.client.list_chains(req).await?.into_inner();
            out.chains(&list.chains, false);
        }
        Command::Chain(ChainCmd::Delete { name }) => {
            let req = admin.request(pb::DeleteChainRequest { name })?;
            let chain = admin.client.delete_chain(req).await?.into_inner();
            out.chains(&[chain], true);
        }
        Command::Key(KeyCmd::Set { name, policy }) => {
            let req = admin.request(pb::SetKeyRequest {
                name,
                policy: Some(policy.input()?),
            })?;
            let key = admin.client.set_key(req).await?.into_inner();
            out.keys(&[key], true);
        }
        Command::Key(KeyCmd::Create { name, policy }) => {
            let req = admin.request(pb::CreateKeyRequest {
                name,
                policy: Some(policy.input()?),
            })?;
            let created = admin.client.create_key(req).await?.into_inner();
            out.created_key(&created);
        }
        Command::Key(KeyCmd::List) => {
            let req = admin.request(pb::ListKeysRequest {})?;
            let list = admin.client.list_keys(req).await?.into_inner();
            out.keys(&list.keys, false);
        }
        Command::Key(KeyCmd::Revoke { name }) => {
            let req = admin.request(pb::RevokeKeyRequest { name })?;
            let key = admin.client.revoke_key(req).await?.into_inner();
            out.keys(&[key], true);
        }
        Command::Usage {
            key,
            since,
            until,
            by,
        } => {
            let since_ms = since
                .as_deref()
                .map(|t| parse_time(t, "--since"))
                .transpose()?
                .unwrap_or(0);
            let until_ms = until
                .as_deref()
                .map(|t| parse_time(t, "--until"))
                .transpose()?
                .unwrap_or(0);
            let by = by.unwrap_or_default();
            if !matches!(
                by.as_str(),
                "" | "key" | "model" | "provider" | "credential" | "day"
            ) {
                return Err(Failure::Usage(format!(
                    "--by {by:?} is not one of key, model, provider, credential, day"
                )));
            }
            let req = admin.request(pb::QueryUsageRequest {
                key: key.unwrap_or_default(),
                since_ms,
                until_ms,
                by: by.clone(),
            })?;
            let usage = admin.client.query_usage(req).await?.into_inner();
            if by.is_empty() {
                out.usage(&usage.rows);
            } else {
                out.usage_by(&by, &usage.rows);
            }
        }
        Command::Nodes => {
            let req = admin.request(pb::ListNodesRequest {})?;
            let list = admin.client.list_nodes(req).await?.into_inner();
            out.nodes(&list.nodes);
        }
    }
    Ok(())
}
