//! session-worker binary: parse config, set up logging, run.


fn main() {
    let config: session_worker::Config = telemetry::parse_config("session-worker");
    if let Err(err) = config.validate() {
        eprintln!("session-worker: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    telemetry::init_logging();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|err| {
                eprintln!("session-worker: cannot start runtime: {err}");
                std::process::exit(70)
            })
    });
    let result = system.block_on(session_worker::run(config, telemetry::shutdown_signal()));
    if let Err(err) = result {
        eprintln!("session-worker: {err:#}");
        std::process::exit(1);
    }
}

