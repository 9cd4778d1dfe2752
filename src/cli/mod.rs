//! The command line: parses arguments, loads the configuration, runs the
//! command, and maps the outcome to an exit code (0 fine, 1 runtime failure,
//! 2 invalid configuration; systemd does not restart on 2).
//!
//! One file per command group: `run.rs` (`run`, `check`), `status.rs`,
//! `rules/` (`rules test`, `rules replay`, `rules push`, `rules keygen`),
//! `outbox.rs` (`outbox list`, `export`, `purge`) and `modbus.rs` (`modbus
//! read`). Nothing else in the crate depends on this module.

mod modbus;
mod outbox;
mod rules;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "IoT edge gateway: sensor readings in, threshold rules on the device, durable alerts upstream over MQTT"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, env = "OUTPOST_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(ConfigArg),
    /// Validate the configuration and every rules file it names.
    Check(ConfigArg),
    /// Test and replay rules offline; push them to gateways.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Inspect or empty the outbox of a stopped gateway.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Show a running gateway's state: upstream link, outbox, sources, firing alerts.
    Status(StatusArgs),
    /// Talk to Modbus devices directly, without running the gateway.
    #[command(subcommand)]
    Modbus(ModbusCommand),
}

#[derive(Debug, Subcommand)]
pub enum ModbusCommand {
    /// Poll each device of the [[modbus]] buses once and print what it answered.
    Read {
        #[command(flatten)]
        config: ConfigArg,
        /// Only the [[modbus]] source with this name.
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the raw JSON of /status instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Push a rules file to a gateway (and wait for its answer) or to a
    /// group, through the broker of the config's [upstream].
    Push(rules::PushArgs),
    /// Make an ed25519 key pair to sign pushes: FILE (private, 0600) and FILE.pub.
    Keygen {
        /// Where to write the private key (never over an existing file).
        file: PathBuf,
    },
    /// Run rule unit tests: readings in, the alerts expected out.
    Test {
        /// Test files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the alerts a recorded series of readings (JSON lines) would produce.
    Replay {
        /// Rules file(s).
        #[arg(long, required = true)]
        rules: Vec<PathBuf>,
        /// Readings, one JSON object a line: {"ts":..,"sensor":..,"metric":..,"value":..}
        /// or a device payload with "sensor" and "ts" (like the json format).
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Print the waiting alerts as a table, then the counters and pending events.
    List(ConfigArg),
    /// Print the waiting alerts as JSON lines: the payloads as they will be published.
    Export(ConfigArg),
    /// Remove every waiting alert (recorded as a `purged` event); prints how many.
    Purge(ConfigArg),
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(a) => run::check(&a.config),
        Command::Run(a) => run::run(&a.config),
        Command::Status(a) => status::status(&a.config.config, a.json),
        Command::Outbox(c) => outbox::run(c),
        Command::Modbus(ModbusCommand::Read { config, source }) => {
            modbus::read(&config.config, source.as_deref())
        }
        Command::Rules(RulesCommand::Test { files }) => rules::test(&files),
        Command::Rules(RulesCommand::Replay { rules, input }) => rules::replay(&rules, &input),
        Command::Rules(RulesCommand::Push(a)) => rules::push(&a),
        Command::Rules(RulesCommand::Keygen { file }) => rules::keygen(&file),
    };
    ExitCode::from(code)
}

fn print_diagnostics(diags: &crate::diagnostic::Diagnostics) {
    for d in diags.iter() {
        eprintln!("{d}");
    }
}

/// Loads the configuration, printing every problem and how many.
fn load(path: &std::path::Path) -> Result<Config, u8> {
    Config::load(path).map_err(|diags| {
        print_diagnostics(&diags);
        eprintln!(
            "{}: {} error{}",
            path.display(),
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        EXIT_INVALID
    })
}

/// A tokio runtime for a command: the gateway's two workers (`run`) or one
/// thread for the short commands. Prints why when it cannot be built.
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, u8> {
    let mut builder = match workers {
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("outpost: cannot start the runtime: {e}");
        EXIT_FAILURE
    })
}
