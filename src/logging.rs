//! Logging through the `log` facade: to the systemd journal (with the
//! target as a structured field) when running under systemd, to stderr
//! otherwise. `RUST_LOG` sets the level (default `info`).

/// Installs the logger once, at start-up.
pub fn init() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            let logger = logger.with_syslog_identifier("gsinfer".into());
            if logger.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}
