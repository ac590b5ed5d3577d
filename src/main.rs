//! The `octopus` binary: parses the command line and hands over to `app` (the gateway) or
//! `commands` (the headless admin commands).

use std::path::PathBuf;
use std::process::ExitCode;

use octopus::commands::{self, DEFAULT_CONFIG_PATH};

/// mimalloc on every target: musl's allocator takes one global lock (1.8x the CPU per request
/// under concurrency), and glibc's costs 15-24% more instructions per request (numbers in
/// Cargo.toml's comment). `allocator::Mimalloc` says how requests reach it.
#[global_allocator]
static ALLOCATOR: octopus::allocator::Mimalloc = octopus::allocator::Mimalloc;

/// Applies the allocator's settings before the first allocation: one of them (how arenas are
/// committed) only affects arenas created after it, and Rust's runtime allocates before `main`.
/// A function in `.init_array` runs when the process is loaded, before the runtime starts.
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR_AT_LOAD: extern "C" fn() = configure_allocator_at_load;

extern "C" fn configure_allocator_at_load() {
    octopus::allocator::return_freed_memory_promptly();
}

const USAGE: &str = "\
octopus - an LLM API gateway

Usage:
  octopus start [--config PATH]   start the gateway (default config: data/config.json)
  octopus version                 print the version
  octopus --help                  print this help

Headless administration (same --config; the gateway need not run):
  octopus reset-password [--config PATH] [--username NAME]
        set an admin password (default admin) read from stdin, or asked on a terminal;
        ends the account's sessions
  octopus export [--config PATH] [--output FILE|-] [--include-stats]
        write the configuration backup (channel keys in clear) to FILE or stdout
  octopus import [--config PATH] FILE|-
        replace the configuration with a backup document, in one transaction
  octopus healthcheck [--config PATH] [--url URL]
        GET /healthz on the configured port on loopback (or URL); exit 0 when it answers 200
";

enum Command {
    Start {
        config_path: PathBuf,
    },
    ResetPassword {
        config_path: PathBuf,
        username: String,
    },
    Export {
        config_path: PathBuf,
        output: Option<PathBuf>,
        include_stats: bool,
    },
    Import {
        config_path: PathBuf,
        file: PathBuf,
    },
    Healthcheck {
        config_path: PathBuf,
        config_path_given: bool,
        url: Option<String>,
    },
    Version,
    Help,
}

const COMMANDS: &[&str] = &[
    "start",
    "version",
    "help",
    "reset-password",
    "export",
    "import",
    "healthcheck",
];
/// The commands that read a config file.
const CONFIG_COMMANDS: &[&str] = &["start", "reset-password", "export", "import", "healthcheck"];

fn parse_arguments() -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut command: Option<String> = None;
    let mut config_path: Option<PathBuf> = None;
    let mut username = "admin".to_string();
    let mut output = None;
    let mut include_stats = false;
    let mut import_file = None;
    let mut url = None;
    while let Some(argument) = parser.next().map_err(|error| error.to_string())? {
        let current = command.as_deref();
        match argument {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") if current.is_none() => return Ok(Command::Version),
            Short('c') | Long("config")
                if current.is_some_and(|name| CONFIG_COMMANDS.contains(&name)) =>
            {
                config_path = Some(parser.value().map_err(|error| error.to_string())?.into());
            }
            Long("username") if current == Some("reset-password") => {
                username = value_string(&mut parser, "--username")?;
                if username.is_empty() {
                    return Err("--username must not be empty".to_string());
                }
            }
            Short('o') | Long("output") if current == Some("export") => {
                output = Some(parser.value().map_err(|error| error.to_string())?.into());
            }
            Long("include-stats") if current == Some("export") => include_stats = true,
            Long("url") if current == Some("healthcheck") => {
                url = Some(value_string(&mut parser, "--url")?)
            }
            Value(value) if current == Some("import") && import_file.is_none() => {
                import_file = Some(PathBuf::from(value))
            }
            Value(value) if current.is_none() => {
                let value = value
                    .into_string()
                    .map_err(|_| "the command is not valid UTF-8".to_string())?;
                if !COMMANDS.contains(&value.as_str()) {
                    return Err(format!("unknown command {value:?}"));
                }
                command = Some(value);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let config_path_given = config_path.is_some();
    let config_path = config_path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    match command.as_deref() {
        Some("start") => Ok(Command::Start { config_path }),
        Some("version") => Ok(Command::Version),
        Some("help") => Ok(Command::Help),
        Some("reset-password") => Ok(Command::ResetPassword {
            config_path,
            username,
        }),
        Some("export") => Ok(Command::Export {
            config_path,
            output,
            include_stats,
        }),
        Some("import") => {
            let file = import_file.ok_or("import needs the backup FILE (or - for stdin)")?;
            Ok(Command::Import { config_path, file })
        }
        Some("healthcheck") => Ok(Command::Healthcheck {
            config_path,
            config_path_given,
            url,
        }),
        _ => Err("missing command".to_string()),
    }
}

fn value_string(parser: &mut lexopt::Parser, option: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|error| error.to_string())?
        .into_string()
        .map_err(|_| format!("{option} is not valid UTF-8"))
}

/// Prints a command's outcome: its message on stderr (stdout may carry a backup document), and
/// exit code 1 with the error.
fn finish(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(message) => {
            if !message.is_empty() {
                eprintln!("octopus: {message}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("octopus: {message}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    match parse_arguments() {
        Ok(Command::Start { config_path }) => ExitCode::from(octopus::app::run(&config_path) as u8),
        Ok(Command::ResetPassword {
            config_path,
            username,
        }) => finish(commands::reset_password(&config_path, &username)),
        Ok(Command::Export {
            config_path,
            output,
            include_stats,
        }) => finish(commands::export(
            &config_path,
            output.as_deref(),
            include_stats,
        )),
        Ok(Command::Import { config_path, file }) => finish(commands::import(&config_path, &file)),
        Ok(Command::Healthcheck {
            config_path,
            config_path_given,
            url,
        }) => finish(commands::healthcheck(
            &config_path,
            config_path_given,
            url.as_deref(),
        )),
        Ok(Command::Version) => {
            println!("octopus {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("octopus: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
