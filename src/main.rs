//! The `octopus` binary: parses the command line and hands over to `app`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
octopus - an LLM API gateway

Usage:
  octopus start [--config PATH]   start the gateway (default config: data/config.json)
  octopus version                 print the version
  octopus --help                  print this help
";

enum Command {
    Start { config_path: PathBuf },
    Version,
    Help,
}

fn parse_arguments() -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut command = None;
    let mut config_path = PathBuf::from("data/config.json");
    while let Some(argument) = parser.next().map_err(|error| error.to_string())? {
        match argument {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") if command.is_none() => return Ok(Command::Version),
            Short('c') | Long("config") if command.as_deref() == Some("start") => {
                config_path = parser.value().map_err(|error| error.to_string())?.into();
            }
            Value(value) if command.is_none() => {
                let value = value.into_string().map_err(|_| "the command is not valid UTF-8".to_string())?;
                match value.as_str() {
                    "start" | "version" | "help" => command = Some(value),
                    other => return Err(format!("unknown command {other:?}")),
                }
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    match command.as_deref() {
        Some("start") => Ok(Command::Start { config_path }),
        Some("version") => Ok(Command::Version),
        Some("help") => Ok(Command::Help),
        _ => Err("missing command".to_string()),
    }
}

fn main() -> ExitCode {
    match parse_arguments() {
        Ok(Command::Start { config_path }) => ExitCode::from(octopus::app::run(&config_path) as u8),
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
