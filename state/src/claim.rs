//! Where a container's create claim lives: `<state_dir>/claims/<id>`, a file a `create` holds
//! an exclusive `flock` on from before its grant until the runtime's own `create` process
//! exits (the descriptor is inherited across exec()). A `delete` that finds the claim held, and
//! the runtime with no state for the id yet, waits: releasing then would free a slice the
//! container is still about to come up with.
//!
//! The file holds the taker's pid ([`write_pid`]): after the exec it is the runtime's create's,
//! which a `delete` waits for while it runs, and the poststop hook may remove the claim its
//! parent (the runtime's `delete`, run by the entry binary holding the claim) holds.
//!
//! Lock order: see [`crate::lock`]: a claim is waited for only while the ledger's lock is not
//! held.

use crate::decimal;

/// The folder of claim files inside the state directory.
pub const DIR: &str = "claims";

/// The width the taker's pid is written in at the file's start, so that a rewrite in place never
/// leaves digits of a longer one behind.
pub const PID_WIDTH: usize = 10;

/// The claim file's bytes for taker `pid`: right-aligned in [`PID_WIDTH`], then a newline,
/// written at offset 0 of the locked file.
pub fn write_pid(pid: u64, out: &mut [u8; PID_WIDTH + 1]) -> &[u8] {
    let mut buf = [0u8; 20];
    let digits = decimal::format(pid, &mut buf);
    let n = digits.len().min(PID_WIDTH);
    out.fill(b' ');
    out[PID_WIDTH - n..PID_WIDTH].copy_from_slice(&digits[digits.len() - n..]);
    out[PID_WIDTH] = b'\n';
    out
}

/// The taker's pid a claim file's bytes record (only its first [`PID_WIDTH`] + 1 are read).
pub fn read_pid(text: &[u8]) -> Option<u64> {
    let text = &text[..text.len().min(PID_WIDTH + 1)];
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let start = text.iter().position(|&b| b != b' ')?;
    decimal::parse(&text[start..])
}

/// Whether `id` can name a claim file: one path component, not hidden, of a length every file
/// system takes. runc and crun refuse any other id anyway.
pub fn is_nameable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 255 && id[0] != b'.' && !id.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_one_visible_component() {
        assert!(is_nameable(b"c1"));
        assert!(is_nameable(&[b'a'; 255]));
        for bad in [&b""[..], b".", b"..", b".x", b"a/b", b"a\0b", &[b'a'; 256]] {
            assert!(!is_nameable(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_pid_round_trips_in_a_fixed_width() {
        let mut buf = [0u8; PID_WIDTH + 1];
        assert_eq!(write_pid(42, &mut buf), b"        42\n");
        assert_eq!(read_pid(b"        42\n"), Some(42));
        for pid in [1, 4194304, 4294967295] {
            assert_eq!(read_pid(write_pid(pid, &mut buf)), Some(pid));
        }
        assert_eq!(
            read_pid(b"        42\nxyz"),
            Some(42),
            "only the start is read"
        );
        for bad in [&b""[..], b"          \n", b"  -1\n", b"4 2\n"] {
            assert_eq!(read_pid(bad), None, "{bad:?}");
        }
    }
}
