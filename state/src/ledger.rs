//! The ledger (`ledger.json`): the MIG instances gpushare made, the leases on them and on whole
//! GPUs, the MPS daemons it runs, counters. One JSON object, written whole by the full program
//! (a temp file renamed over it) under the ledger's lock ([`crate::lock`]); the entry binary
//! never writes it, and journals its own grants and releases instead ([`crate::journal`]).
//!
//! The object starts with a header written by [`write`], not by a serializer's field order:
//!
//! ```text
//! {"format":1,"generation":<n>,<the body's members>}
//! ```
//!
//! `format` is this module's [`FORMAT`]; `generation` is bumped by every write, and journal
//! lines apply only to the generation they were written against. The body's members are
//! core's (serde, compact). The entry binary reads the header with no parser ([`generation`])
//! and the body only through the scans below, each with the writer's promise it rests on:
//!
//! - [`may_mention`]: every container id is written as a JSON string, escaped only when it
//!   holds `"`, `\` or a control character;
//! - [`runs_no_mps_daemon`]: the `mps` member is always written, `[]` when no daemon runs;
//! - [`may_record_compute_modes`]: the `compute_modes` member is written only when it holds a
//!   record.
//!
//! Readers that parse (core) take `format` and `generation` as members wherever they stand, so
//! a ledger a tool rewrote with its members reordered still loads; the entry binary, which reads
//! only the exact header, leaves such a ledger to the full program, whose next save writes the
//! header again. A ledger of another `format` is refused by both: the entry binary hands over,
//! core says which format it found.

use crate::bytes::{contains, find};
use crate::decimal;

/// The ledger's file name inside the state directory.
pub const NAME: &str = "ledger.json";
/// What `gpusharectl repair` renames a corrupt ledger to: `ledger.json.corrupt-<unix seconds>`.
pub const CORRUPT_SUFFIX: &str = ".corrupt-";
/// The ledger format this gpushare writes and reads.
pub const FORMAT: u32 = 1;

/// The header's bytes before the generation; [`FORMAT`] spelled in it.
const OPEN: &[u8] = b"{\"format\":1,\"generation\":";

/// Write the whole ledger of `generation` through `put`: the header, then the members of
/// `body`, the text of a JSON object (`{...}`) holding neither `format` nor `generation`.
/// None, with nothing written, when `body` is not an object's text.
pub fn write(generation: u64, body: &[u8], mut put: impl FnMut(&[u8])) -> Option<()> {
    let members = body.strip_prefix(b"{")?;
    if members.last() != Some(&b'}') {
        return None;
    }
    put(OPEN);
    put(decimal::format(generation, &mut [0u8; 20]));
    if members != b"}" {
        put(b",");
    }
    put(members);
    Some(())
}

/// The generation the header holds; None for a ledger that does not start with the header
/// [`write`] writes (another format, or members reordered by hand).
pub fn generation(ledger: &[u8]) -> Option<u64> {
    let rest = ledger.strip_prefix(OPEN)?;
    let end = rest.iter().position(|&b| b == b',' || b == b'}')?;
    decimal::parse(&rest[..end])
}

/// Whether the ledger's JSON could mention `container_id`: its JSON string, quotes included,
/// occurs in the file. An id that JSON would escape (or that is not UTF-8) is always a "maybe":
/// a false "maybe" only costs the locked look-up it would have saved.
pub fn may_mention(ledger: &[u8], container_id: &[u8]) -> bool {
    let plain = core::str::from_utf8(container_id).is_ok()
        && container_id
            .iter()
            .all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
    if !plain {
        return true;
    }
    let mut at = 0;
    while let Some(i) = find(&ledger[at..], container_id) {
        let start = at + i;
        let end = start + container_id.len();
        if start > 0 && ledger[start - 1] == b'"' && ledger.get(end) == Some(&b'"') {
            return true;
        }
        at = start + 1;
    }
    false
}

/// The `mps` member of a ledger with no MPS daemon.
pub const NO_MPS_DAEMON: &[u8] = b"\"mps\":[]";

/// Whether the ledger says no MPS daemon runs (a release may then have no daemon to stop).
pub fn runs_no_mps_daemon(ledger: &[u8]) -> bool {
    contains(ledger, NO_MPS_DAEMON)
}

/// The `compute_modes` member's key, written only when it holds a record.
pub const COMPUTE_MODES_KEY: &[u8] = b"\"compute_modes\"";

/// Whether the ledger may record a GPU's compute mode to put back; no is certain.
pub fn may_record_compute_modes(ledger: &[u8]) -> bool {
    contains(ledger, COMPUTE_MODES_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn written(generation: u64, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write(generation, body, |b| out.extend_from_slice(b))?;
        Some(out)
    }

    #[test]
    fn the_header_is_written_before_the_body_and_read_back() {
        let l = written(42, br#"{"gpus":[],"mps":[]}"#).unwrap();
        assert_eq!(l, br#"{"format":1,"generation":42,"gpus":[],"mps":[]}"#);
        assert_eq!(generation(&l), Some(42));
        let empty = written(u64::MAX, b"{}").unwrap();
        assert_eq!(empty, br#"{"format":1,"generation":18446744073709551615}"#);
        assert_eq!(generation(&empty), Some(u64::MAX));
        for bad in [&b""[..], b"[]", b"{", b"x{}", b"{\"a\":1"] {
            assert_eq!(written(1, bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn another_format_or_order_has_no_header() {
        assert_eq!(generation(br#"{"format":1,"generation":0}"#), Some(0));
        for bad in [
            &br#"{"format":1,"gpus":[],"generation":4}"#[..],
            br#"{"format":2,"generation":4,"gpus":[]}"#,
            br#"{"format":1,"generation":-4,"gpus":[]}"#,
            br#"{"format":1,"generation":"4","gpus":[]}"#,
            br#"{"format":1,"generation":4"#,
            br#"{"generation":4,"format":1}"#,
            br#" {"format":1,"generation":4}"#,
            b"",
        ] {
            assert_eq!(generation(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn ids_are_matched_whole_and_quoted() {
        let ledger = br#"{"instances":[{"lease":{"container_id":"abc123"}}]}"#;
        assert!(may_mention(ledger, b"abc123"));
        assert!(!may_mention(ledger, b"abc"));
        assert!(!may_mention(ledger, b"bc123"));
        assert!(!may_mention(ledger, b"lease"[..4].as_ref()));
        assert!(may_mention(ledger, b"container_id"));
        assert!(!may_mention(b"", b"x"));
        // Ids JSON escapes, or that are not text, are always a maybe.
        assert!(may_mention(b"{}", b"a\"b"));
        assert!(may_mention(b"{}", b"a\\b"));
        assert!(may_mention(b"{}", b"a\nb"));
        assert!(may_mention(b"{}", &[0xff, 0x41]));
    }

    #[test]
    fn the_body_scans() {
        assert!(runs_no_mps_daemon(
            br#"{"format":1,"generation":1,"mps":[]}"#
        ));
        assert!(!runs_no_mps_daemon(
            br#"{"format":1,"generation":1,"mps":[{"pid":1}]}"#
        ));
        assert!(!runs_no_mps_daemon(br#"{"format":1,"generation":1}"#));
        assert!(may_record_compute_modes(br#"{"compute_modes":[]}"#));
        assert!(!may_record_compute_modes(br#"{"mps":[]}"#));
    }
}
