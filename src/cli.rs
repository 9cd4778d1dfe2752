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
    /// Show a running gateway's state: upstream link, outbox, sources, firing alerts.
    Status(StatusArgs),
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
        Command::Status(a) => status(&a.config.config, a.json),
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

/// How long `outpost status` waits for the gateway.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn status(path: &std::path::Path, json: bool) -> u8 {
    use crate::http::{client, status};
    // The packaged outpost.toml is readable only by root and group outpost
    // (it may hold a password). A person without access still gets an
    // answer from the default address, with a note saying so.
    let listen = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let default = config::HttpConfig::default().listen;
            eprintln!(
                "outpost status: cannot read {} (permission denied); asking the default address. Run it with sudo, or join group outpost, to use the configured one.",
                path.display()
            );
            default
        }
        _ => match load(path) {
            Ok(c) => c.http.listen,
            Err(code) => return code,
        },
    };
    let Some(listen) = listen else {
        eprintln!(
            "outpost status: [http] listen is \"\" in {}: the gateway serves no status (set it, e.g. \"127.0.0.1:9184\", and restart it)",
            path.display()
        );
        return EXIT_FAILURE;
    };
    let addr = client::connect_addr(listen);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost status: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let resp = match rt.block_on(client::get(addr, "/status", STATUS_TIMEOUT)) {
        Ok(r) => r,
        Err(client::ClientError::Refused { .. }) => {
            eprintln!(
                "outpost status: the gateway is not running: nothing answers at http://{addr} ([http] listen in {}). Start it with `systemctl start outpost`; `journalctl -u outpost` says why it stopped.",
                path.display()
            );
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("outpost status: {e}");
            return EXIT_FAILURE;
        }
    };
    if resp.status != 200 {
        eprintln!(
            "outpost status: http://{addr}/status answered {}: {}",
            resp.status,
            resp.body.trim()
        );
        return EXIT_FAILURE;
    }
    if json {
        println!("{}", resp.body.trim_end());
        return EXIT_OK;
    }
    match serde_json::from_str::<status::Status>(&resp.body) {
        Ok(s) => {
            print!("{}", status::render(&s));
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "outpost status: http://{addr}/status is not an outpost status document ({e}); is another program listening there?"
            );
            EXIT_FAILURE
        }
    }
}
