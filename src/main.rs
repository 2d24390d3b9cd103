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
    /// a board profile whose runtime defaults apply (rpi-zero2w, rpi3, rpi3-32bit,
    /// rpi4, rpi5, armv7, aarch64); the configuration's own keys win
    #[argh(option)]
    board: Option<String>,
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
    Passwd(Passwd),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "passwd")]
/// add or update a user in a password file (the format mosquitto_passwd writes)
struct Passwd {
    #[argh(positional)]
    file: PathBuf,
    #[argh(positional)]
    user: String,
    /// read the password from the first line of standard input instead of asking
    #[argh(switch)]
    stdin: bool,
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
    if let Some(Command::Passwd(p)) = &args.command {
        let password = match read_password(p.stdin) {
            Ok(password) => password,
            Err(e) => {
                eprintln!("tern passwd: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match tern::auth::password::set_password(&p.file, &p.user, password.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern passwd: {e}");
                ExitCode::FAILURE
            }
        };
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
    let board = args.board.as_deref();
    let config = match &args.config {
        Some(path) => Config::load_with_board(path, board).map_err(|e| e.to_string()),
        None => Config::parse_with_board("", board),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match tern::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The password from stdin's first line, or typed twice at the terminal without echo.
fn read_password(from_stdin: bool) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let line = |prompt: &str| -> Result<String, String> {
        if !from_stdin {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
        }
        let mut text = String::new();
        stdin
            .lock()
            .read_line(&mut text)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if !from_stdin {
            eprintln!();
        }
        Ok(text.trim_end_matches(['\r', '\n']).to_owned())
    };
    if from_stdin {
        return line("");
    }
    if !stdin.is_terminal() {
        return Err("standard input is not a terminal: use --stdin to pipe the password in".into());
    }
    let _echo = EchoOff::new();
    let first = line("Password: ")?;
    let second = line("Reenter password: ")?;
    if first != second {
        return Err("the passwords do not match".into());
    }
    Ok(first)
}

/// Turns terminal echo off for as long as it lives.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on stdin with a valid termios buffer.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff(None);
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &term);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}
