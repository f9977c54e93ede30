use anyhow::Context as _;
use cio_gateway::cli::{Cli, Command, ConfigArg};
use cio_gateway::config::Settings;
use cio_gateway::{app, commands, telemetry};
use clap::Parser;
use std::process::ExitCode;

/// Memory crosses threads on every message (lapin's I/O thread, HTTP workers, actors); glibc's
/// allocator spent a tenth of the gateway's CPU on that in the webhook benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or(Command::Serve(ConfigArg { config: None }));
    // The demo prints its own story; only problems are worth a log line there.
    let level = if matches!(command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    let tracing = telemetry::init_logging(level, telemetry::otlp::endpoint_from_env().as_deref());
    let result = actix_rt::System::new().block_on(run(command));
    tracing.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &ConfigArg) -> anyhow::Result<Settings> {
    Settings::load(config.config.as_deref()).context("invalid configuration")
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(config) => app::serve(load(&config)?).await.map(|_| ExitCode::SUCCESS),
        Command::Sandbox { addr } => commands::sandbox(addr).await,
        Command::Publish {
            kind,
            user,
            anonymous_id,
            object,
            payload,
            correlation_id,
            config,
        } => {
            let who = commands::Who {
                user,
                anonymous_id,
                object,
            };
            let envelope = commands::envelope(&kind, who, &payload, correlation_id)?;
            commands::publish(load(&config)?, envelope).await
        }
        Command::Dlq { action, config } => commands::dlq(load(&config)?, action).await,
        Command::Topology(config) => commands::topology(load(&config)?).await,
        Command::Status { url, json, config } => commands::status(load(&config)?, url, json).await,
        Command::CheckConfig(args) => {
            let settings = load(&args.config)?;
            for warning in settings.warnings() {
                eprintln!("warning: {warning}");
            }
            print!("{}", settings.masked(args.format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { api } => commands::demo(api).await,
    }
}
