//! session-worker binary: parse config, set up logging, run until SIGTERM, drain.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let config: session_worker::Config = telemetry::parse_config("session-worker");
    if let Err(err) = config.validate() {
        eprintln!("session-worker: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    let tracing = telemetry::init("session-worker");
    telemetry::run_system("session-worker", tracing, async move {
        session_worker::run(config, telemetry::shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))
    });
}
