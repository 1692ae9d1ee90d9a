//! auth-service binary: parse the command line, then serve or mint a dev token.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use auth_service::config::{EXIT_CONFIG, check_issuer};
use auth_service::{Cli, Command, MintArgs, ServeArgs};
use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return exit(EXIT_CONFIG);
        }
    };
    match cli.command {
        Some(Command::MintToken(args)) => mint_token(&args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("auth-service: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    telemetry::init_logging();
    let result = actix_web::rt::System::new()
        .block_on(auth_service::run(config, telemetry::shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.exit_code() != EXIT_CONFIG {
                tracing::error!(error = %e, "auth-service failed");
            }
            eprintln!("auth-service: {e}");
            exit(e.exit_code())
        }
    }
}

/// DEVELOPMENT ONLY: print a token signed with the dev issuer key.
fn mint_token(args: &MintArgs) -> ExitCode {
    if let Err(e) = check_issuer("--issuer", &args.issuer) {
        eprintln!("auth-service mint-token: {e}");
        return exit(EXIT_CONFIG);
    }
    if args.audience.trim().is_empty() || args.sub.trim().is_empty() {
        eprintln!("auth-service mint-token: invalid --audience/--sub: must not be empty");
        return exit(EXIT_CONFIG);
    }
    let key = match auth_service::keys::load(&args.key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("auth-service mint-token: invalid --key-file: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    match auth_service::mint::mint(&key, args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auth-service mint-token: {e}");
            exit(1)
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
