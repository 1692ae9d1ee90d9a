//! gateway binary: parse config, set up logging, run.


fn main() {
    let config: gateway::Config = telemetry::parse_config("gateway");
    if let Err(err) = config.validate() {
        eprintln!("gateway: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    telemetry::init_logging();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|err| {
                eprintln!("gateway: cannot start runtime: {err}");
                std::process::exit(70)
            })
    });
    if let Err(err) = system.block_on(gateway::run(config, telemetry::shutdown_signal())) {
        eprintln!("gateway: {err:#}");
        std::process::exit(1);
    }
}
