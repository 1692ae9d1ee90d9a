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
        Some(Command::GenKeys) => {
            println!("AUTH_VAULT_KEYS={}", auth_service::crypto::Sealer::generate_entry("k1"));
            println!("COOKIE_ENCRYPTION_KEY={}", auth_service::crypto::random_token());
            ExitCode::SUCCESS
        }
        Some(Command::HashPassword) => hash_password(),
        Some(Command::MachineClient(args)) => machine_client(&args),
        None => serve(cli.serve),
    }
}

/// Print a new machine client's secret (stderr, once) and its file entry (stdout).
fn machine_client(args: &auth_service::config::MachineClientArgs) -> ExitCode {
    let (secret, entry) =
        auth_service::clients::machine::new_entry(&args.id, args.scope.as_deref(), args.introspect, !args.no_tokens);
    // The same checks the server applies when it loads the file.
    let scopes: Vec<String> = args
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if let Err(e) =
        auth_service::clients::machine::MachineClients::parse(&serde_json::json!([entry]).to_string(), &scopes)
    {
        eprintln!("auth-service machine-client: {e}");
        return exit(EXIT_CONFIG);
    }
    eprintln!("client secret (shown once, store it in the client): {secret}");
    println!("{entry}");
    ExitCode::SUCCESS
}

/// Read one line (the password) from stdin and print its argon2id hash.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("auth-service hash-password: cannot read stdin");
        return exit(1);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("auth-service hash-password: empty password");
        return exit(EXIT_CONFIG);
    }
    match auth_service::upstream::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("auth-service hash-password: {e}");
            exit(1)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let upstream_args = args.upstream.clone();
    let configs = args.into_configs().and_then(|(config, oauth)| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| auth_service::ConfigError::new("AUTH_UPSTREAM", e.to_string()))?;
        let upstream = upstream_args.build(http)?;
        Ok((config, oauth, upstream))
    });
    let (config, oauth, upstream) = match configs {
        Ok(c) => c,
        Err(e) => {
            eprintln!("auth-service: {e}");
            return exit(EXIT_CONFIG);
        }
    };
    let tracing = telemetry::init("auth-service");
    let result =
        actix_web::rt::System::new().block_on(auth_service::run(config, oauth, upstream, telemetry::shutdown_signal()));
    drop(tracing);
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

/// DEVELOPMENT ONLY: print a token signed with the development key (AUTH_DEV_KEY_FILE).
fn mint_token(args: &MintArgs) -> ExitCode {
    if let Err(e) = check_issuer("--issuer", &args.issuer) {
        eprintln!("auth-service mint-token: {e}");
        return exit(EXIT_CONFIG);
    }
    if args.audience.trim().is_empty() || args.sub.trim().is_empty() {
        eprintln!("auth-service mint-token: invalid --audience/--sub: must not be empty");
        return exit(EXIT_CONFIG);
    }
    let key = match auth_service::key::load(&args.key_file) {
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
