//! todo-api binary: parse config, set up logging, run until SIGTERM/SIGINT, drain.

fn main() {
    let config: todo_api::Config = telemetry::parse_config("todo-api");
    if let Err(err) = config.validate() {
        eprintln!("todo-api: {err}");
        std::process::exit(telemetry::EXIT_CONFIG);
    }
    let tracing = telemetry::init("todo-api");
    telemetry::run_system("todo-api", tracing, async move {
        todo_api::run(config, telemetry::shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))
    });
}
