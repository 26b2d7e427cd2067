//! Temp files. Every file gpushare replaces (the ledger, the offers, placement tables, the
//! compacted logs, and a bundle's `config.json`) is first written to
//! `.<name>.gpushare-tmp.<pid>.<16 hex digits>` in the same folder, made exclusively and never
//! through a symlink, then renamed over `<name>`. The pid lets `gpusharectl gc` remove what a
//! killed writer left (only once that process is gone); the 64 random bits that nobody can
//! plant a file or a link at the name beforehand.

use crate::decimal;

/// What every temp file's name carries after the name it replaces.
pub const MARK: &[u8] = b".gpushare-tmp.";

/// The temp file name for replacing `name`, by process `pid`, with `random` bits, written into
/// `out`: its length, or None when it does not fit.
pub fn write_name(name: &[u8], pid: u64, random: u64, out: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    let mut put = |b: &[u8]| -> Option<()> {
        let end = at + b.len();
        out.get_mut(at..end)?.copy_from_slice(b);
        at = end;
        Some(())
    };
    put(b".")?;
    put(name)?;
    put(MARK)?;
    put(decimal::format(pid, &mut [0u8; 20]))?;
    put(b".")?;
    let mut hex = [0u8; 16];
    for (i, h) in hex.iter_mut().enumerate() {
        *h = b"0123456789abcdef"[(random >> (60 - 4 * i) & 15) as usize];
    }
    put(&hex)?;
    Some(at)
}

/// The pid of the process that wrote the temp file `file_name`; None for a name that is not a
/// temp file's. (Names without the random part, which an older gpushare wrote, are read too.)
pub fn writer_pid(file_name: &[u8]) -> Option<u64> {
    if file_name.first() != Some(&b'.') {
        return None;
    }
    let at = (0..=file_name.len().checked_sub(MARK.len())?)
        .rev()
        .find(|&i| file_name[i..].starts_with(MARK))?;
    let tail = &file_name[at + MARK.len()..];
    let pid = tail.split(|&b| b == b'.').next()?;
    decimal::parse(pid).filter(|&p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let mut buf = [0u8; 64];
        let n = write_name(b"ledger.json", 4242, 0x00ff_1234_5678_9abc, &mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b".ledger.json.gpushare-tmp.4242.00ff123456789abc"
        );
        assert_eq!(writer_pid(&buf[..n]), Some(4242));
        assert_eq!(write_name(b"ledger.json", 4242, 1, &mut buf[..n - 1]), None);
        assert_eq!(
            writer_pid(b".ledger.json.gpushare-tmp.99999999"),
            Some(99999999)
        );
        assert_eq!(writer_pid(b".a.gpushare-tmp.b.gpushare-tmp.7.00"), Some(7));
        for bad in [
            &b"ledger.json"[..],
            b"ledger.json.gpushare-tmp.5.00",
            b".ledger.json.gpushare-tmp.",
            b".ledger.json.gpushare-tmp.0.00",
            b".ledger.json.gpushare-tmp.x.00",
            b".gpushare-tmp",
            b"",
        ] {
            assert_eq!(writer_pid(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }
}
