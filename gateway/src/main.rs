//! gateway binary: parse config, set up logging, run until SIGTERM, drain.

fn main() {
    let config: gateway::Config = telemetry::parse_config("gateway");
    if let Err(err) = config.validate() {
        eprintln!("gateway: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    telemetry::init_logging();
    telemetry::run_system("gateway", async move {
        gateway::run(config, telemetry::shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))
    });
}
