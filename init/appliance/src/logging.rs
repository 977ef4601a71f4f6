//! Logging for lbcore's programs: to stderr (init puts it in the appliance's log),
//! level from an environment variable, `info` when it is unset or invalid.

/// Starts logging with the filter in `env_var` (e.g. `LBCORE_LOG=debug`).
pub fn init(env_var: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(env_var)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
