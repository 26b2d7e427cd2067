//! gpushare's own log (`[log]` in the config): `tracing` events at the configured level, to the
//! configured file, else to stderr. Set up only on paths that act (a grant, a release, the
//! hook, ctl), never on the pass-through path.

use crate::config::Config;
use std::sync::Mutex;

/// Start logging for `program`. A log file that cannot be opened falls back to stderr, saying
/// so once: logging never makes a container fail.
pub fn init(cfg: &Config, program: &'static str) {
    let level = match cfg.log.level.to_ascii_lowercase().as_str() {
        "error" => tracing::Level::ERROR,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::WARN,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    let file = cfg.log.file.as_ref().and_then(|p| {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "{program}: cannot open log file {}: {e}; logging to stderr",
                    p.display()
                );
                None
            }
        }
    });
    // A second init (tests calling into the library twice) keeps the first subscriber.
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
