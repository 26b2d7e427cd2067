//! The ledger (`ledger.json`): the MIG instances gpushare made, the leases on them and on whole
//! GPUs, the MPS daemons it runs, counters. One JSON object, written whole by the full program
//! (a temp file renamed over it) under the ledger's lock ([`crate::lock`]); the entry binary
//! never writes it, and journals its own grants and releases instead ([`crate::journal`]).
//!
//! The object starts with a header written by [`write`], not by a serializer's field order:
//!
//! ```text
//! {"format":1,"generation":<n>,"lease_markers":true,"mps_daemons":<bool>,"compute_mode_records":<bool>,<the body's members>}
//! ```
//!
//! `format` is this module's [`FORMAT`]; `generation` is bumped by every write, and journal
//! lines apply only to the generation they were written against. The flags say what the
//! entry binary would otherwise scan the whole body for ([`Header`]): `lease_markers`, that
//! the writer keeps a marker for every lease ([`crate::lease`]); `mps_daemons`, that an MPS
//! daemon runs (a release may have to stop it); `compute_mode_records`, that a GPU's compute
//! mode is recorded to be put back. The body's members are core's (serde, compact). The entry
//! binary reads the header with no parser ([`header`], at most [`HEADER_MAX`] bytes of the
//! file) and the body only through [`may_mention`], whose promise is the writer's: every
//! container id is written as a JSON string, escaped only when it holds `"`, `\` or a control
//! character. It scans the body only for a ledger whose header has no flags (an older
//! gpushare's) or for an id whose marker exists.
//!
//! Readers that parse (core) take `format` and `generation` as members wherever they stand, and
//! ignore the flags (a save writes them from what it saves), so a ledger a tool rewrote with its
//! members reordered still loads; the entry binary, which reads only the exact header, leaves
//! such a ledger to the full program, whose next save writes the header again. A ledger of
//! another `format` is refused by both: the entry binary hands over, core says which format it
//! found.

use crate::bytes::find;
use crate::decimal;

/// The ledger's file name inside the state directory.
pub const NAME: &str = "ledger.json";
/// What `gpusharectl repair` renames a corrupt ledger to: `ledger.json.corrupt-<unix seconds>`.
pub const CORRUPT_SUFFIX: &str = ".corrupt-";
/// The ledger format this gpushare writes and reads.
pub const FORMAT: u32 = 1;

/// The header's bytes before the generation; [`FORMAT`] spelled in it.
const OPEN: &[u8] = b"{\"format\":1,\"generation\":";

/// The header's flags: what the ledger holds that a release must know of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// An MPS daemon runs: a release may have to stop it.
    pub mps_daemons: bool,
    /// A GPU's compute mode is recorded, to be put back.
    pub compute_mode_records: bool,
}

/// A ledger's header as [`header`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    /// None for a ledger whose writer wrote no flags (a gpushare from before them): it keeps
    /// no lease markers, and its body must be scanned for what the flags would say.
    pub flags: Option<Flags>,
}

impl Header {
    /// Whether every lease of this ledger has its marker ([`crate::lease`]), so that a missing
    /// marker means the id holds nothing.
    pub fn marked(&self) -> bool {
        self.flags.is_some()
    }
}

const MARKERS: &[u8] = b",\"lease_markers\":true";
const MPS: &[u8] = b",\"mps_daemons\":";
const MODES: &[u8] = b",\"compute_mode_records\":";

fn boolean(b: bool) -> &'static [u8] {
    if b {
        b"true"
    } else {
        b"false"
    }
}

/// The most bytes of a ledger that [`header`] reads: the longest header [`write`] writes, and
/// the byte after it.
pub const HEADER_MAX: usize = OPEN.len() + 20 + MARKERS.len() + MPS.len() + 5 + MODES.len() + 5 + 1;

/// Write the whole ledger of `generation` through `put`: the header with `flags`, then the
/// members of `body`, the text of a JSON object (`{...}`) holding neither `format`,
/// `generation` nor a flag. None, with nothing written, when `body` is not an object's text.
pub fn write(generation: u64, flags: Flags, body: &[u8], mut put: impl FnMut(&[u8])) -> Option<()> {
    let members = body.strip_prefix(b"{")?;
    if members.last() != Some(&b'}') {
        return None;
    }
    put(OPEN);
    put(decimal::format(generation, &mut [0u8; 20]));
    put(MARKERS);
    put(MPS);
    put(boolean(flags.mps_daemons));
    put(MODES);
    put(boolean(flags.compute_mode_records));
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

/// The header at the start of `ledger` (of which the first [`HEADER_MAX`] bytes are enough);
/// None as for [`generation`]. Flags are read only when all of them stand in [`write`]'s order
/// and are followed by the end of a member.
pub fn header(ledger: &[u8]) -> Option<Header> {
    let rest = ledger.strip_prefix(OPEN)?;
    let end = rest.iter().position(|&b| b == b',' || b == b'}')?;
    let generation = decimal::parse(&rest[..end])?;
    let flag = |rest: &[u8], key: &[u8]| -> Option<(bool, usize)> {
        let v = rest.strip_prefix(key)?;
        match v {
            _ if v.starts_with(b"true") => Some((true, key.len() + 4)),
            _ if v.starts_with(b"false") => Some((false, key.len() + 5)),
            _ => None,
        }
    };
    let flags = (|| {
        let rest = rest[end..].strip_prefix(MARKERS)?;
        let (mps_daemons, n) = flag(rest, MPS)?;
        let (compute_mode_records, m) = flag(&rest[n..], MODES)?;
        matches!(rest.get(n + m), Some(b',') | Some(b'}')).then_some(Flags {
            mps_daemons,
            compute_mode_records,
        })
    })();
    Some(Header { generation, flags })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn written(generation: u64, flags: Flags, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        write(generation, flags, body, |b| out.extend_from_slice(b))?;
        Some(out)
    }

    const MPS_ONLY: Flags = Flags {
        mps_daemons: true,
        compute_mode_records: false,
    };

    #[test]
    fn the_header_is_written_before_the_body_and_read_back() {
        let l = written(42, MPS_ONLY, br#"{"gpus":[],"mps":[]}"#).unwrap();
        assert_eq!(
            l,
            br#"{"format":1,"generation":42,"lease_markers":true,"mps_daemons":true,"compute_mode_records":false,"gpus":[],"mps":[]}"#
        );
        assert_eq!(generation(&l), Some(42));
        let h = header(&l).unwrap();
        assert_eq!((h.generation, h.flags), (42, Some(MPS_ONLY)));
        assert!(h.marked());
        let modes = Flags {
            mps_daemons: false,
            compute_mode_records: true,
        };
        let longest = Flags {
            mps_daemons: false,
            compute_mode_records: false,
        };
        let empty = written(u64::MAX, longest, b"{}").unwrap();
        assert_eq!(
            empty,
            br#"{"format":1,"generation":18446744073709551615,"lease_markers":true,"mps_daemons":false,"compute_mode_records":false}"#
        );
        assert_eq!(generation(&empty), Some(u64::MAX));
        // The longest header, and the byte after it, fit in what the entry binary reads.
        assert_eq!(empty.len(), HEADER_MAX);
        let tail = written(u64::MAX, longest, br#"{"gpus":[]}"#).unwrap();
        assert_eq!(header(&tail[..HEADER_MAX]).unwrap().flags, Some(longest));
        let l = written(7, modes, br#"{"a":1}"#).unwrap();
        assert_eq!(header(&l).unwrap().flags, Some(modes));
        for bad in [&b""[..], b"[]", b"{", b"x{}", b"{\"a\":1"] {
            assert_eq!(
                written(1, modes, bad),
                None,
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn a_header_without_all_its_flags_in_order_has_none() {
        // An older gpushare's header: the generation, and no marker is trusted.
        let old = header(br#"{"format":1,"generation":9,"gpus":[],"mps":[]}"#).unwrap();
        assert_eq!((old.generation, old.flags, old.marked()), (9, None, false));
        for partial in [
            &br#"{"format":1,"generation":9,"lease_markers":true,"gpus":[]}"#[..],
            br#"{"format":1,"generation":9,"lease_markers":false,"mps_daemons":false,"compute_mode_records":false}"#,
            br#"{"format":1,"generation":9,"lease_markers":true,"compute_mode_records":false,"mps_daemons":false}"#,
            br#"{"format":1,"generation":9,"lease_markers":true,"mps_daemons":0,"compute_mode_records":false}"#,
            br#"{"format":1,"generation":9,"lease_markers":true,"mps_daemons":false,"compute_mode_records":falsey}"#,
            br#"{"format":1,"generation":9,"lease_markers":true,"mps_daemons":false,"compute_mode_records":false"#,
        ] {
            let h = header(partial).unwrap();
            assert_eq!(h.flags, None, "{:?}", core::str::from_utf8(partial));
        }
        assert_eq!(header(br#"{"format":2,"generation":9}"#), None);
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
}
