//! The command line: parses arguments, loads the configuration, runs the
//! command, and maps the outcome to an exit code (0 fine, 1 runtime failure,
//! 2 invalid configuration; systemd does not restart on 2).

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
    /// Test and replay rules offline, with no broker and no running gateway.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Inspect or empty the outbox of a stopped gateway.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
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
        Command::Check(a) => check(&a.config),
        Command::Run(a) => run(&a.config),
        Command::Outbox(c) => crate::outbox::cli::run(c),
        Command::Rules(RulesCommand::Test { files }) => crate::offline::rules_test(&files),
        Command::Rules(RulesCommand::Replay { rules, input }) => {
            crate::offline::rules_replay(&rules, &input)
        }
    };
    ExitCode::from(code)
}

pub(crate) fn print_diagnostics(diags: &crate::diagnostic::Diagnostics) {
    for d in diags.iter() {
        eprintln!("{d}");
    }
}

fn load(path: &std::path::Path) -> Result<Config, u8> {
    Config::load(path).map_err(|diags| {
        for d in diags.iter() {
            eprintln!("{d}");
        }
        eprintln!(
            "{}: {} error{}",
            path.display(),
            diags.len(),
            if diags.len() == 1 { "" } else { "s" }
        );
        EXIT_INVALID
    })
}

fn check(path: &std::path::Path) -> u8 {
    match load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            println!("{}", c.summary());
            println!("{}: ok", path.display());
            EXIT_OK
        }
        Err(code) => code,
    }
}

fn run(path: &std::path::Path) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(config.gateway.log_level.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match rt.block_on(crate::runtime::run(config)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!("{e:#}");
            EXIT_FAILURE
        }
    }
}
