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
    /// PEM CA certificate that signs the control plane's certificate, for an https:// --control
    /// (default: the public web roots).
    #[arg(long, env = "KEYPLANE_CA", global = true)]
    ca: Option<std::path::PathBuf>,
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
    /// The request log: every request the data planes answered or refused, newest first.
    Requests {
        /// Only this client key (by name).
        #[arg(long)]
        key: Option<String>,
        /// Only this requested model.
        #[arg(long)]
        model: Option<String>,
        /// Only this HTTP status (200, 404, 429, ...).
        #[arg(long)]
        status: Option<u32>,
        /// Only requests started at or after this time (RFC 3339, or YYYY-MM-DD in UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only requests started before this time (RFC 3339, or YYYY-MM-DD in UTC).
        #[arg(long)]
        until: Option<String>,
        /// At most this many requests (at most 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Fallback chains: a name that tries model after model.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Data planes known to the control plane.
    Nodes,
    /// Write a consistent backup of the control plane's store to FILE (mode 0600). Secrets in it
    /// stay sealed under the master key; `keyplane-control restore` reads it.
    Backup {
        /// Where to write it; an existing file is replaced only once the backup is complete.
        file: std::path::PathBuf,
    },
    /// Model catalogs synced from the providers' models APIs.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Price files for providers whose models list carries no prices.
    #[command(subcommand)]
    Prices(PricesCmd),
    /// Exchange rates for prices not in USD.
    #[command(subcommand)]
    Fx(FxCmd),
}

#[derive(Subcommand, Debug)]
enum CatalogCmd {
    /// Sync now: one provider, or every provider with a catalog adapter.
    Sync { provider: Option<String> },
    /// Per provider: last success, models, last error, next sync.
    Status { provider: Option<String> },
}

#[derive(Subcommand, Debug)]
enum PricesCmd {
    /// Import a price file (LiteLLM's model_prices_and_context_window.json, or Keyplane's own
    /// format, see README); a file with any error is refused whole.
    Import {
        file: std::path::PathBuf,
        /// Apply every price of the file to this provider.
        #[arg(long)]
        provider: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum FxCmd {
    /// Set the rate of a currency in USD per unit, e.g. `fx set CNY 0.14`.
    Set {
        currency: String,
        usd_per_unit: String,
    },
    /// List the rates.
    List,
}

#[derive(Subcommand, Debug)]
enum ProviderCmd {
    /// Add a provider. Works whether or not the provider is reachable.
    Add {
        name: String,
        /// The upstream's protocol: openai (Chat Completions), anthropic (Messages),
        /// openai-responses (the Responses API) or gemini (Google's Gemini API) (default: the
        /// preset's). The control plane checks it, so a newer control plane's protocols work
        /// from an older keyplanectl.
        #[arg(long)]
        protocol: Option<String>,
        /// OpenAI-style URLs (openai, openai-responses) end in /v1; Anthropic's and Gemini's
        /// do not (default: the preset's).
        #[arg(long)]
        base_url: Option<String>,
        /// A known provider: openrouter, zenmux, deepinfra, deepseek, openai, anthropic, groq,
        /// together, mistral, xai, qwen, siliconflow, moonshot, zhipu, gemini, gemini-openai.
        #[arg(long)]
        preset: Option<String>,
        /// Catalog adapter: openrouter, zenmux, together, deepinfra, list, anthropic-list,
        /// gemini-list, or none (default: the preset's).
        #[arg(long)]
        catalog: Option<String>,
        #[command(flatten)]
        timeouts: TimeoutFlags,
    },
    /// List providers.
    List,
    /// Change a provider's protocol, base URL or timeouts (0: back to the data plane's
    /// default). Only the flags given change; credentials and models stay.
    Set {
        name: String,
        /// openai, anthropic, openai-responses or gemini, e.g. to move an OpenAI provider to
        /// the Responses API.
        #[arg(long)]
        protocol: Option<String>,
        #[arg(long)]
        base_url: Option<String>,
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
    /// Largest non-streamed answer read from the provider, in bytes (default: the data plane's
    /// --max-upstream-body-bytes).
    #[arg(long)]
    max_body_bytes: Option<u64>,
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
    /// Keep this key's prompt and completion bodies (capped) for the console's request view.
    #[arg(long, conflicts_with = "no_capture_bodies")]
    capture_bodies: bool,
    /// Stop keeping this key's bodies (the default for a new key).
    #[arg(long)]
    no_capture_bodies: bool,
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
            capture_bodies: match (self.capture_bodies, self.no_capture_bodies) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
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
    /// Clear a credential's health state (cooldown, invalid, exhausted, open circuit,
    /// disabled).
    Enable { id: String },
    /// Change a credential's multiplier, quota reset period or label; only the flags given
    /// change (its secret stays: add a new credential to change that).
    Set {
        id: String,
        /// Cost multiplier (e.g. 0.8 for a discount).
        #[arg(long, allow_hyphen_values = true)]
        multiplier: Option<String>,
        /// daily, weekly, monthly, or "" for never.
        #[arg(long)]
        quota_resets: Option<String>,
        #[arg(long)]
        label: Option<String>,
    },
    /// Take a credential out of routing until `credential enable`, whatever the data planes
    /// report meanwhile.
    Disable {
        id: String,
        /// Why, shown as the state's reason (default: "disabled by an operator").
        #[arg(long, default_value = "")]
        reason: String,
    },
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
    /// List model offerings, from every source (sync, price files, manual).
    List {
        #[arg(long)]
        model: Option<String>,
    },
    /// Add a client-facing alias: requests for NAME go to TARGET's offerings.
    Alias { name: String, target: String },
    /// List aliases.
    Aliases,
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
        // No answer from a control plane at all (plain text to a TLS port, say): the status
        // was made on this side, from a transport error.
        Err(Failure::Refused(status)) if std::error::Error::source(&status).is_some() => {
            eprintln!(
                "keyplanectl: cannot talk to the control plane: {} (is it https://, or http://?)",
                source_chain(&status)
            );
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
    let endpoint = if cli.control.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &cli.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Failure::Usage(format!("--ca {}: cannot read: {e}", path.display()))
                })?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_webpki_roots(),
        };
        endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("TLS setup: {}", source_chain(&e))))?
    } else {
        endpoint
    };
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

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
    if let Command::Provider(ProviderCmd::Add {
        protocol,
        base_url,
        preset: None,
        ..
    }) = &cli.command
        && (protocol.is_none() || base_url.is_none())
    {
        return Err(Failure::Usage(
            "provider add needs --protocol and --base-url, or --preset".into(),
        ));
    }
    let price_file = match &cli.command {
        Command::Prices(PricesCmd::Import { file, .. }) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?,
        ),
        _ => None,
    };
    let mut admin = connect(&cli).await?;
    match cli.command {
        Command::Provider(ProviderCmd::Add {
            name,
            protocol,
            base_url,
            preset,
            catalog,
            timeouts,
        }) => {
            let req = admin.request(pb::AddProviderRequest {
                name,
                protocol: protocol.unwrap_or_default(),
                base_url: base_url.unwrap_or_default(),
                preset: preset.unwrap_or_default(),
                catalog: catalog.unwrap_or_default(),
                connect_timeout_ms: timeouts.connect_timeout_ms.unwrap_or(0),
                first_byte_timeout_ms: timeouts.first_byte_timeout_ms.unwrap_or(0),
                idle_timeout_ms: timeouts.idle_timeout_ms.unwrap_or(0),
                max_body_bytes: timeouts.max_body_bytes.unwrap_or(0),
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
        Command::Provider(ProviderCmd::Set {
            name,
            protocol,
            base_url,
            timeouts,
        }) => {
            let req = admin.request(pb::SetProviderRequest {
                name,
                protocol,
                base_url,
                connect_timeout_ms: timeouts.connect_timeout_ms,
                first_byte_timeout_ms: timeouts.first_byte_timeout_ms,
                idle_timeout_ms: timeouts.idle_timeout_ms,
                max_body_bytes: timeouts.max_body_bytes,
            })?;
            let provider = admin.client.set_provider(req).await?.into_inner();
            out.providers(&[provider], true);
        }
        Command::Credential(CredentialCmd::Enable { id }) => {
            let req = admin.request(pb::EnableCredentialRequest { id })?;
            let credential = admin.client.enable_credential(req).await?.into_inner();
            out.credentials(&[credential], true);
        }
        Command::Credential(CredentialCmd::Set {
            id,
            multiplier,
            quota_resets,
            label,
        }) => {
            let req = admin.request(pb::SetCredentialRequest {
                id,
                multiplier,
                quota_resets,
                label,
            })?;
            let credential = admin.client.set_credential(req).await?.into_inner();
            out.credentials(&[credential], true);
        }
        Command::Credential(CredentialCmd::Disable { id, reason }) => {
            let req = admin.request(pb::DisableCredentialRequest { id, reason })?;
            let credential = admin.client.disable_credential(req).await?.into_inner();
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
        Command::Requests {
            key,
            model,
            status,
            since,
            until,
            limit,
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
            let req = admin.request(pb::ListRequestsRequest {
                key: key.unwrap_or_default(),
                model: model.unwrap_or_default(),
                status: status.unwrap_or(0),
                since_ms,
                until_ms,
                limit,
            })?;
            let list = admin.client.list_requests(req).await?.into_inner();
            out.requests(&list.requests);
        }
        Command::Nodes => {
            let req = admin.request(pb::ListNodesRequest {})?;
            let list = admin.client.list_nodes(req).await?.into_inner();
            out.nodes(&list.nodes);
        }
        Command::Backup { file } => {
            let req = admin.request(pb::BackupRequest {})?;
            let mut stream = admin.client.backup(req).await?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                bytes.extend_from_slice(&chunk.data);
            }
            write_private(&file, &bytes)
                .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", file.display())))?;
            out.backup(&file, bytes.len());
        }
        Command::Model(ModelCmd::Alias { name, target }) => {
            let req = admin.request(pb::SetAliasRequest {
                alias: name,
                target,
            })?;
            let alias = admin.client.set_alias(req).await?.into_inner();
            out.aliases(&[alias], true);
        }
        Command::Model(ModelCmd::Aliases) => {
            let req = admin.request(pb::ListAliasesRequest {})?;
            let list = admin.client.list_aliases(req).await?.into_inner();
            out.aliases(&list.aliases, false);
        }
        Command::Catalog(CatalogCmd::Sync { provider }) => {
            let req = admin.request(pb::SyncCatalogRequest {
                provider: provider.unwrap_or_default(),
            })?;
            let status = admin.client.sync_catalog(req).await?.into_inner();
            out.catalog_status(&status.providers);
        }
        Command::Catalog(CatalogCmd::Status { provider }) => {
            let req = admin.request(pb::CatalogStatusRequest {
                provider: provider.unwrap_or_default(),
            })?;
            let status = admin.client.catalog_status(req).await?.into_inner();
            out.catalog_status(&status.providers);
        }
        Command::Prices(PricesCmd::Import { file, provider }) => {
            let req = admin.request(pb::ImportPricesRequest {
                content: price_file.unwrap_or_default(),
                file_name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                provider: provider.unwrap_or_default(),
            })?;
            let imported = admin.client.import_prices(req).await?.into_inner();
            out.imported(&imported);
        }
        Command::Fx(FxCmd::Set {
            currency,
            usd_per_unit,
        }) => {
            let req = admin.request(pb::SetFxRateRequest {
                currency,
                usd_per_unit,
            })?;
            let rate = admin.client.set_fx_rate(req).await?.into_inner();
            out.fx_rates(&[rate], true);
        }
        Command::Fx(FxCmd::List) => {
            let req = admin.request(pb::ListFxRatesRequest {})?;
            let list = admin.client.list_fx_rates(req).await?.into_inner();
            out.fx_rates(&list.rates, false);
        }
    }
    Ok(())
}
