//! One line of the log an engine gives runc with `--log`: JSON with `--log-format json` (what
//! containerd and Docker ask for), else logrus's text form. The one writer of that format: the
//! entry binary's hand-over lines and the full wrapper's errors (bin/gpushare-runtime/runc_log.rs)
//! both come from here. Built in the caller's buffer: the entry binary has no allocator.

/// How much a person should care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Worth knowing, nothing to do (a busy lock, offers that no longer apply).
    Info,
    /// Something to look at (a state file that cannot be read or written).
    Warning,
    /// The command failed: the line engines show their user.
    Error,
}

impl Level {
    fn name(self) -> &'static [u8] {
        match self {
            Level::Info => b"info",
            Level::Warning => b"warning",
            Level::Error => b"error",
        }
    }
}

/// The line for the message made of `msg`'s parts at `level`, at `unix_secs`, newline included:
/// `{"level":..,"msg":..,"time":..}` (the keys in the order serde_json writes them) or
/// `time=".." level=.. msg=".."`. None when it does not fit in `buf`.
pub fn line<'b>(
    buf: &'b mut [u8],
    json: bool,
    level: Level,
    msg: &[&[u8]],
    unix_secs: u64,
) -> Option<&'b [u8]> {
    let mut time = [0u8; 20];
    let time = rfc3339(unix_secs, &mut time);
    let mut out = Out { buf, len: 0 };
    if json {
        out.put(b"{\"level\":\"")?;
        out.put(level.name())?;
        out.put(b"\",\"msg\":\"")?;
        out.quoted(msg)?;
        out.put(b"\",\"time\":\"")?;
        out.put(time)?;
        out.put(b"\"}\n")?;
    } else {
        out.put(b"time=\"")?;
        out.put(time)?;
        out.put(b"\" level=")?;
        out.put(level.name())?;
        out.put(b" msg=\"")?;
        out.quoted(msg)?;
        out.put(b"\"\n")?;
    }
    let len = out.len;
    Some(&out.buf[..len])
}

struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.len.checked_add(bytes.len())?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    /// The parts as the inside of a JSON string (which a logrus text value also reads).
    fn quoted(&mut self, parts: &[&[u8]]) -> Option<()> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in parts.iter().flat_map(|p| p.iter()) {
            match b {
                b'"' => self.put(b"\\\"")?,
                b'\\' => self.put(b"\\\\")?,
                b'\n' => self.put(b"\\n")?,
                b'\t' => self.put(b"\\t")?,
                b'\r' => self.put(b"\\r")?,
                0..=0x1f | 0x7f => self.put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ])?,
                _ => self.put(&[b])?,
            }
        }
        Some(())
    }
}

/// `unix_secs` as UTC in RFC 3339 (`2026-12-06T08:15:58Z`), as the full wrapper writes it.
pub fn rfc3339(unix_secs: u64, buf: &mut [u8; 20]) -> &[u8] {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    let (y, m, d) = civil(days);
    let fields: [(u64, usize); 6] = [
        (y, 4),
        (m, 2),
        (d, 2),
        (secs / 3600, 2),
        (secs % 3600 / 60, 2),
        (secs % 60, 2),
    ];
    let seps = [b'-', b'-', b'T', b':', b':', b'Z'];
    let mut at = 0;
    for ((mut v, width), sep) in fields.into_iter().zip(seps) {
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        buf[at + width] = sep;
        at += width + 1;
    }
    &buf[..at]
}

/// The (year, month, day) `days` after 1970-01-01, in the proleptic Gregorian calendar: days
/// counted from 0000-03-01, so that a leap day ends its year, in 400-year eras.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(json: bool, level: Level, msg: &[&[u8]], t: u64) -> std::string::String {
        let mut buf = [0u8; 256];
        let l = line(&mut buf, json, level, msg, t).unwrap();
        std::string::String::from_utf8(l.to_vec()).unwrap()
    }

    #[test]
    fn json_lines_are_runcs() {
        assert_eq!(
            line_of(true, Level::Info, &[b"gpushare: ", b"create c1", b": busy"], 0),
            "{\"level\":\"info\",\"msg\":\"gpushare: create c1: busy\",\"time\":\"1970-01-01T00:00:00Z\"}\n"
        );
        assert_eq!(
            line_of(false, Level::Warning, &[b"a \"b\"\\\n\x01"], 1_780_733_758),
            "time=\"2026-06-06T08:15:58Z\" level=warning msg=\"a \\\"b\\\"\\\\\\n\\u0001\"\n"
        );
    }

    #[test]
    fn a_line_that_does_not_fit_is_none() {
        let mut buf = [0u8; 56];
        assert!(line(&mut buf, true, Level::Info, &[b"x"], 0).is_none());
        let mut buf = [0u8; 57];
        assert!(line(&mut buf, true, Level::Info, &[b"x"], 0).is_some());
    }

    #[test]
    fn dates_across_leap_days_and_centuries() {
        let at = |t: u64| {
            let mut b = [0u8; 20];
            std::string::String::from_utf8(rfc3339(t, &mut b).to_vec()).unwrap()
        };
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
