//! Errors reported the way engines read them: runc writes JSON lines to the `--log` file, and
//! containerd/Docker show the last error line's `msg` ("OCI runtime create failed: ...").

use gpushare_fastpath::runc_log::{line, Level};
use std::io::Write;
use std::path::Path;

/// Append one error to the engine's log file (JSON lines or runc's text format, as
/// `gpushare_fastpath::runc_log` writes them) and print it on stderr. A log file that cannot be
/// written is not an error of its own.
pub fn error(log: Option<&Path>, json: bool, msg: &str) {
    let msg = format!("gpushare: {msg}");
    if let Some(path) = log {
        // Room for every byte escaped (`\u00XX`) and the line's frame.
        let mut buf = vec![0u8; msg.len() * 6 + 96];
        let now = gpushare_core::fsutil::now_unix();
        if let Some(line) = line(&mut buf, json, Level::Error, &[msg.as_bytes()], now) {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line);
            }
        }
    }
    eprintln!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_line_is_what_containerd_parses() {
        let dir = std::env::temp_dir().join(format!("gpushare-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.json");
        error(Some(&log), true, "no free 2g.20gb slice");
        let line = std::fs::read_to_string(&log).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "gpushare: no free 2g.20gb slice");
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z'));
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"), "{t}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
