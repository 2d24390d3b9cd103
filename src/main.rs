//! The `tern` command: run the broker, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use tern::config::Config;

#[derive(FromArgs)]
/// Tern: an MQTT 3.1, 3.1.1 and 5.0 broker for the edge.
struct Args {
    /// configuration file (TOML); without one the built-in defaults apply
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    CheckConfig(CheckConfig),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "check-config")]
/// check a configuration file: exit 0 when it is valid, else name the line and key
struct CheckConfig {
    #[argh(positional)]
    file: PathBuf,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("tern {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::CheckConfig(check)) = args.command {
        return match Config::load(&check.file) {
            Ok(_) => {
                println!("{}: ok", check.file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    match tern::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
