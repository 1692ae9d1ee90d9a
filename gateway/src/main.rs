//! gateway binary: parse config, set up logging, run until SIGTERM, drain.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let config: gateway::Config = telemetry::parse_config("gateway");
    if let Err(err) = config.validate() {
        eprintln!("gateway: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    let tracing = telemetry::init("gateway");
    telemetry::run_system("gateway", tracing, async move {
        gateway::run(config, telemetry::shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))
    });
}
