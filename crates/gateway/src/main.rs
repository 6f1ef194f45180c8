//! The `switchboard` binary: serve a node, print the effective configuration, or mint a
//! development token. All logic lives in the library; this file only parses arguments.

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_gateway::{
    auth::{self, Claims},
    config::{Config, DEV_SECRET},
    server,
};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Real-time pub/sub gateway over WebSocket")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Listen address (overrides node.listen).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Broker URL (overrides broker.url), e.g. memory://.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Development mode: use a well-known HMAC secret when none is configured.
    #[arg(long, global = true)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a gateway node (the default).
    Serve,
    /// Print the effective configuration as TOML.
    Config,
    /// Mint a connection or subscription token signed with the configured HS256 secret
    /// (or --private-key-file for RS256/ES256/EdDSA).
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// JSON shown in presence (`info` claim).
    #[arg(long)]
    info: Option<String>,
    /// Channels this connection may join regardless of namespace policy (comma-separated,
    /// `prefix*` allowed).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Make a subscription token for this one channel.
    #[arg(long)]
    channel: Option<String>,
    /// PEM private key for asymmetric algorithms.
    #[arg(long)]
    private_key_file: Option<PathBuf>,
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut overrides = serde_json::json!({});
    if let Some(listen) = &common.listen {
        overrides["node"] = serde_json::json!({ "listen": listen });
    }
    if let Some(broker) = &common.broker {
        overrides["broker"] = serde_json::json!({ "url": broker });
    }
    if let Some(format) = &common.log_format {
        overrides["log"] = serde_json::json!({ "format": format });
    }
    let mut config = Config::load(common.config.as_deref(), overrides)?;
    if common.dev && config.auth.hmac_secret.is_none() && config.auth.hmac_secret_file.is_none() {
        config.auth.hmac_secret = Some(DEV_SECRET.into());
    }
    Ok(config)
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn mint(config: &Config, args: &TokenArgs) -> anyhow::Result<String> {
    let info = args.info.as_deref().map(serde_json::from_str).transpose().context("--info must be JSON")?;
    let claims = Claims {
        sub: Some(args.user.clone()),
        exp: Some(auth::unix_now() + args.ttl),
        iss: config.auth.issuer.clone(),
        aud: config.auth.audience.clone().map(serde_json::Value::String),
        info,
        channels: (!args.channels.is_empty()).then(|| args.channels.clone()),
        channel: args.channel.clone(),
        ..Claims::default()
    };
    let key = match &args.private_key_file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None if config.auth.algorithm != "HS256" => anyhow::bail!(
            "auth.algorithm is {}: pass the signing key with --private-key-file",
            config.auth.algorithm
        ),
        None => auth::hmac_secret(&config.auth)?
            .context("no HS256 secret configured (set SWITCHBOARD_AUTH__HMAC_SECRET, auth.hmac_secret_file, or pass --dev)")?
            .into_bytes(),
    };
    Ok(auth::mint(&config.auth.algorithm, &key, &claims)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = load_config(&cli.common)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => print!("{}", config.to_toml()?),
        Command::Token(args) => println!("{}", mint(&config, &args)?),
        Command::Serve => {
            init_tracing(&config);
            // Every connection is a file descriptor: use all the hard limit allows.
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(limit) => tracing::debug!(limit, "open-file limit"),
                Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
            }
            // Give freed memory back to the OS within seconds, not at the next burst of
            // activity (10 000 closed connections otherwise leave RSS at its peak).
            let background = config.node.allocator_background_thread;
            if let Err(error) = tikv_jemalloc_ctl::background_thread::write(background) {
                tracing::warn!(%error, "cannot configure jemalloc's background thread");
            }
            if cli.common.dev {
                tracing::warn!(
                    "--dev: using the development HMAC secret unless one is configured; never in production"
                );
            }
            let listener = tokio::net::TcpListener::bind(config.node.listen)
                .await
                .with_context(|| format!("cannot bind {}", config.node.listen))?;
            server::run(listener, config, server::shutdown_signal()).await?;
        }
    }
    Ok(())
}
