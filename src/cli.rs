//! The command line of docs/reference.md §2.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cio-gateway",
    version,
    about = "RabbitMQ-backed Customer.io integration gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(ConfigArg),
    /// Run a local stand-in for Customer.io.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:4010")]
        addr: SocketAddr,
    },
    /// Publish one envelope to the right exchange.
    Publish {
        /// identify, track, transactional, page, screen, delete, suppress, unsuppress, addDevice, deleteDevice, merge, object, segment, broadcast
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The person (every type but an anonymous event, an object and a broadcast).
        #[arg(long)]
        user: Option<String>,
        /// An anonymous track, page or screen (instead of --user); with --user on an identify,
        /// the anonymous activity to merge into the person.
        #[arg(long)]
        anonymous_id: Option<String>,
        /// The object of an `object` envelope, as OBJECT_TYPE_ID:OBJECT_ID (e.g. 1:acme).
        #[arg(long, value_name = "TYPE:ID")]
        object: Option<String>,
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long)]
        correlation_id: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Inspect and replay dead letters without losing any.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Declare the RabbitMQ topology and print it.
    Topology(ConfigArg),
    /// Ask a running gateway how it stands (GET /admin/status) and print it as a table.
    Status {
        /// The gateway's admin address; default http.admin_addr, else http.addr.
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON document instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load and validate the configuration, print the effective values (secrets masked).
    /// Every problem is reported at once.
    CheckConfig(CheckConfigArgs),
    /// Local mode end to end with sample traffic, then a summary table.
    Demo {
        /// The Customer.io API people and events are delivered through (customerio.api).
        #[arg(long, value_enum, default_value = "track")]
        api: crate::config::DeliveryApi,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// How to print the effective values: a TOML file the gateway would load, or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::config::OutputFormat,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// A TOML file layered over config/default.toml and config/<GATEWAY_ENV>.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Show dead letters (they stay in the queue), with a count by errorKind and type.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Show one dead letter in full.
    Show {
        #[arg(long)]
        correlation_id: String,
    },
    /// Republish the selected dead letters to their original exchange, then remove them.
    Replay {
        /// At most this many (the oldest that match).
        #[arg(long, alias = "limit")]
        count: Option<usize>,
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Delete the selected dead letters (all of them without a filter).
    Purge {
        #[arg(long)]
        yes: bool,
        /// At most this many (the oldest that match).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        filter: DlqFilter,
    },
}

/// Which dead letters: every option given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DlqFilter {
    #[arg(long, alias = "correlationId")]
    pub correlation_id: Option<String>,
    /// invalid, rejected, exhausted, webhook_unparsable, ...
    #[arg(long, alias = "errorKind")]
    pub error_kind: Option<String>,
    /// The envelope's type: identify, track, transactional, ...
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// The user (or anonymous id) the envelope was about.
    #[arg(long)]
    pub user: Option<String>,
    /// Dead-lettered at or after: RFC 3339 or ms since the epoch.
    #[arg(long, value_parser = crate::dlq_admin::parse_time)]
    pub since: Option<i64>,
    /// Dead-lettered before: RFC 3339 or ms since the epoch.
    #[arg(long, value_parser = crate::dlq_admin::parse_time)]
    pub until: Option<i64>,
}

impl DlqFilter {
    pub fn into_filter(self) -> crate::dlq_admin::Filter {
        crate::dlq_admin::Filter {
            error_kind: self.error_kind,
            kind: self.kind,
            user: self.user,
            correlation_id: self.correlation_id,
            since: self.since,
            until: self.until,
        }
    }
}
