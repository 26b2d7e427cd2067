//! Whether a container id may hold a lease, as `delete`, `exec` and the poststop hook decide it
//! with no lock: from the id's lease marker (`gpushare_state::lease`), the ledger's header and
//! the release journal, without the ledger's body whenever the header says that its writer
//! keeps a marker for every lease. Reading the body stays the answer for a ledger of an older
//! gpushare's, whose header has no flags.
//!
//! The reader takes the marker first, then the journal, then the header: a missing marker
//! means no lease was visible at that moment, a grant journaled since shows in the journal, and
//! a fold between the journal and the header leaves journal lines of an older generation, which
//! no longer apply (as when the body was read second).

use gpushare_state::{journal, lease, ledger};

/// The ledger's header as the reader found it (a ledger that cannot be read, or must not be
/// used, is the caller's to answer for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// No ledger: nothing was ever granted here.
    Missing,
    /// The header read ([`ledger::header`]); None when the file does not start with one.
    Read(Option<ledger::Header>),
}

/// Whether `id` may hold a lease: `marker`, whether its marker is there; `head`, the ledger's
/// header; `journal`, the journal's bytes. None when only the ledger's body can tell (a header
/// without flags, or an id that cannot name a marker). A false "maybe" only costs a locked look.
pub fn may_hold(id: &[u8], marker: bool, head: Head, journal: &[u8]) -> Option<bool> {
    match head {
        Head::Missing => Some(false),
        Head::Read(Some(h)) if h.marked() && lease::is_nameable(id) => {
            Some(journal::may_hold_after(journal, h.generation, id, marker))
        }
        Head::Read(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn head(generation: u64, flags: bool) -> Head {
        let flags = flags.then_some(ledger::Flags::default());
        Head::Read(Some(ledger::Header { generation, flags }))
    }

    fn line(id: &[u8], g: u64, grant: bool) -> Vec<u8> {
        let mut buf = [0u8; journal::MAX_GRANT_LINE];
        let tail = journal::tail(b"").unwrap();
        let n = match grant {
            true => journal::grant_line(b"MIG-1", id, 1, g, None, 1, tail, &mut buf),
            false => journal::release_line(id, 1, g, tail, &mut buf),
        };
        buf[..n.unwrap()].to_vec()
    }

    #[test]
    fn a_missing_marker_under_a_marking_writer_holds_nothing() {
        assert_eq!(may_hold(b"c1", false, head(5, true), b""), Some(false));
        assert_eq!(may_hold(b"c1", true, head(5, true), b""), Some(true));
        // The journal still decides: a grant journaled after the marker's stat, a release.
        assert_eq!(
            may_hold(b"c1", false, head(5, true), &line(b"c1", 5, true)),
            Some(true)
        );
        assert_eq!(
            may_hold(b"c1", true, head(5, true), &line(b"c1", 5, false)),
            Some(false)
        );
        assert_eq!(
            may_hold(b"c1", true, head(6, true), &line(b"c1", 5, false)),
            Some(true),
            "a release of an older generation no longer applies"
        );
    }

    #[test]
    fn only_the_body_can_tell_for_an_older_writer_or_an_unnameable_id() {
        assert_eq!(may_hold(b"c1", false, head(5, false), b""), None);
        assert_eq!(may_hold(b"c1", false, Head::Read(None), b""), None);
        assert_eq!(may_hold(b".c1", false, head(5, true), b""), None);
        assert_eq!(may_hold(b"a/b", true, head(5, true), b""), None);
    }

    #[test]
    fn no_ledger_holds_nothing() {
        assert_eq!(may_hold(b"c1", true, Head::Missing, b""), Some(false));
    }
}
