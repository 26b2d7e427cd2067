//! Errors reported the way engines read them: runc writes JSON lines to the `--log` file, and
//! containerd/Docker show the last error line's `msg` ("OCI runtime create failed: ...").

use std::io::Write;
use std::path::Path;

/// Append one error to the engine's log file (JSON lines or runc's text format) and print it
/// on stderr. A log file that cannot be written is not an error of its own.
pub fn error(log: Option<&Path>, json: bool, msg: &str) {
    let msg = format!("gpushare: {msg}");
    if let Some(path) = log {
        let line = if json {
            serde_json::json!({"level": "error", "msg": msg, "time": rfc3339_now()}).to_string()
        } else {
            format!("time=\"{}\" level=error msg={:?}", rfc3339_now(), msg)
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    eprintln!("{msg}");
}

/// UTC time in RFC 3339, without pulling in a date crate.
pub fn rfc3339_now() -> String {
    let secs = gpushare_core::fsutil::now_unix() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn time_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
