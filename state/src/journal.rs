//! The ledger's journal: grants and releases made by the `gpushare` entry binary, which has
//! no allocator to rewrite the ledger with. Under the ledger's lock it appends one line:
//!
//! - a release, by the poststop hook, for a lease the ledger (with the journal) holds:
//!   `<container id> <unix seconds> <generation>;`
//! - a grant, by `create`, of an idle instance the ledger's offers name (see [`crate::offers`]):
//!   `+<MIG UUID> <container id> <unix seconds> <generation> <runtime root or -> <microseconds>;`
//!
//! The next process that loads the ledger under the lock applies the lines in order and empties
//! the journal once it has written the ledger. Readers that do not lock (status, `delete`)
//! apply it in memory. Every write of the ledger bumps its `generation`, and a line applies
//! only to the generation it was written against, so a line left behind by a crash between the
//! ledger's write and the journal's emptying is never applied twice, not even to a new lease
//! of a reused id.
//!
//! Versions: the first append to an empty journal writes [`VERSION_LINE`] (`#gpushare-journal
//! 1`) before its line, in the same write. No line of any version starts with `#` (ids never
//! hold one), so a journal that starts with `#` and not with this version line is another
//! version's: this gpushare reads nothing of it and appends nothing to it (the entry binary
//! hands over, the full program refuses the ledger and says so). A journal with no version line
//! was written by a gpushare from before the line existed, whose lines are version 1's: it is
//! read as version 1. Such a journal exists only on a node upgraded while containers ran (the
//! state directory is in /run, emptied at boot), and only until the next locked save empties it.
use crate::{decimal, ledger};

/// The journal's file name inside the state directory.
pub const NAME: &str = "journal";
/// The journal's first line.
pub const VERSION_LINE: &[u8] = b"#gpushare-journal 1\n";
/// Past this size the hook leaves the release to the full hook, which folds the journal.
pub const MAX_BYTES: usize = 64 << 10;
/// Past this size `create` leaves the grant to the full wrapper, which folds the journal. Every
/// grant, release and delete of the entry binary reads it whole (about 4 ns a byte and pass,
/// four passes a container), and a fold costs one full-wrapper run (about 2.7 ms more): at
/// ~83 bytes a container's grant and release, 4 KiB folds every ~50 containers and keeps the
/// reads at ~2 KiB on average (16 KiB cost a median container ~0.1 ms more; measured on the
/// build VM, docs/benchmarks.md).
pub const MAX_GRANT_BYTES: usize = 4 << 10;
/// The longest id journaled; runc's own limit is far below.
pub const MAX_ID: usize = 1024;
/// The longest runtime root journaled.
const MAX_ROOT: usize = 4096;
/// The most bytes [`release_line`] writes.
pub const MAX_RELEASE_LINE: usize = VERSION_LINE.len() + MAX_ID + 2 * 20 + 4;
/// The most bytes [`grant_line`] writes.
pub const MAX_GRANT_LINE: usize = VERSION_LINE.len() + 2 * MAX_ID + MAX_ROOT + 3 * 20 + 8;

/// An id the journal can hold as is: the characters runc and crun allow in a container id.
/// Anything else (which JSON might escape) is the full hook's to release.
pub fn is_plain_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
}

/// A runtime state root the journal can hold: an absolute ASCII path with no space, `;` or
/// control character.
pub fn is_plain_root(root: &[u8]) -> bool {
    root.first() == Some(&b'/')
        && root.len() <= MAX_ROOT
        && root.iter().all(|&b| b > b' ' && b < 0x7f && b != b';')
}

/// One journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    Release {
        id: &'a [u8],
        time: u64,
        generation: u64,
    },
    Grant {
        /// The MIG UUID of the idle instance granted.
        instance: &'a [u8],
        id: &'a [u8],
        time: u64,
        generation: u64,
        runtime_root: Option<&'a [u8]>,
        latency_us: u64,
    },
}

impl<'a> Entry<'a> {
    pub fn id(&self) -> &'a [u8] {
        match self {
            Entry::Release { id, .. } | Entry::Grant { id, .. } => id,
        }
    }

    pub fn generation(&self) -> u64 {
        match self {
            Entry::Release { generation, .. } | Entry::Grant { generation, .. } => *generation,
        }
    }
}

/// The journal's lines after its version line (or all of a journal from before there was
/// one); None for a journal of another version.
fn body(journal: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = journal.strip_prefix(VERSION_LINE) {
        return Some(rest);
    }
    if VERSION_LINE.starts_with(journal) {
        return Some(&[]); // empty, or a version line a crash cut short
    }
    match journal.first() {
        Some(b'#') => None,
        _ => Some(journal),
    }
}

/// Whether the journal is of another version than this gpushare's, which it must neither read
/// nor append to.
pub fn is_foreign(journal: &[u8]) -> bool {
    body(journal).is_none()
}

/// The journal's first line (its version line, if it has one), for messages.
pub fn first_line(journal: &[u8]) -> &[u8] {
    journal.split(|&b| b == b'\n').next().unwrap_or(&[])
}

/// The journal's well-formed lines, in order; anything else (a line torn by a crash) is skipped,
/// and a journal of another version has none.
pub fn entries(journal: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let body = body(journal).unwrap_or(&[]);
    let complete = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[..i],
        None => &body[..0],
    };
    complete.split(|&b| b == b'\n').filter_map(parse_line)
}

/// The lines written against ledger `generation`.
pub fn of_generation(journal: &[u8], generation: u64) -> impl Iterator<Item = Entry<'_>> {
    entries(journal).filter(move |e| e.generation() == generation)
}

fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    // The `;` tells a whole line from the start of one a crash cut short.
    let line = line.strip_suffix(b";")?;
    if let Some(grant) = line.strip_prefix(b"+") {
        let mut w = grant.split(|&b| b == b' ');
        let (instance, id) = (w.next()?, w.next()?);
        let (time, generation) = (decimal::parse(w.next()?)?, decimal::parse(w.next()?)?);
        let root = w.next()?;
        let latency_us = decimal::parse(w.next()?)?;
        let runtime_root = match root {
            b"-" => None,
            r if is_plain_root(r) => Some(r),
            _ => return None,
        };
        if w.next().is_some() || !is_plain_id(instance) || !is_plain_id(id) {
            return None;
        }
        return Some(Entry::Grant {
            instance,
            id,
            time,
            generation,
            runtime_root,
            latency_us,
        });
    }
    let mut words = line.split(|&b| b == b' ');
    let (id, time, generation) = (
        words.next()?,
        decimal::parse(words.next()?)?,
        decimal::parse(words.next()?)?,
    );
    if words.next().is_some() || !is_plain_id(id) {
        return None;
    }
    Some(Entry::Release {
        id,
        time,
        generation,
    })
}

/// Whether the ledger, with its journal, could still hold anything of `id`'s: the ledger may
/// mention it, or the journal grants it, and no later journal line releases it. A false
/// "maybe" only costs a locked look, which a journal of another version always gets.
pub fn may_hold(ledger: &[u8], journal: &[u8], id: &[u8]) -> bool {
    match ledger::generation(ledger) {
        Some(g) => may_hold_after(journal, g, id, ledger::may_mention(ledger, id)),
        // No header to tell which lines apply (a ledger a tool rewrote): any line of the id's
        // may be a grant core applies (it reads the generation wherever it stands).
        None => {
            is_foreign(journal)
                || ledger::may_mention(ledger, id)
                || entries(journal).any(|e| e.id() == id)
        }
    }
}

/// [`may_hold`] for a ledger of generation `g` that may hold `id` (`in_ledger`) as something
/// other than its body says: its lease marker ([`crate::lease`]), which the entry binary probes
/// instead of scanning the body.
pub fn may_hold_after(journal: &[u8], g: u64, id: &[u8], in_ledger: bool) -> bool {
    if is_foreign(journal) {
        return true;
    }
    let mut held = in_ledger;
    for e in of_generation(journal, g).filter(|e| e.id() == id) {
        held = matches!(e, Entry::Grant { .. });
    }
    held
}

/// How the journal of generation `g` leaves the ledger's leases, when that is simple enough
/// for the ledger's offers to still apply: every grant it holds released again, and at most
/// one lease of the ledger itself released (`Some(Some(id))`; `Some(None)`: none). None for
/// anything else (a journal of another version included). One pass, with room for
/// [`MAX_OUTSTANDING`] grants held at once.
pub fn net_release(journal: &[u8], g: u64) -> Option<Option<&[u8]>> {
    if is_foreign(journal) {
        return None;
    }
    let mut held: [&[u8]; MAX_OUTSTANDING] = [&[]; MAX_OUTSTANDING];
    let mut n = 0;
    let mut released: Option<&[u8]> = None;
    for e in of_generation(journal, g) {
        match e {
            Entry::Grant { id, .. } => {
                if n == MAX_OUTSTANDING || held[..n].contains(&id) {
                    return None;
                }
                held[n] = id;
                n += 1;
            }
            Entry::Release { id, .. } => match held[..n].iter().position(|&h| h == id) {
                Some(k) => {
                    held[k] = held[n - 1];
                    n -= 1;
                }
                None => match released {
                    None => released = Some(id),
                    Some(r) if r == id => {}
                    Some(_) => return None,
                },
            },
        }
    }
    (n == 0).then_some(released)
}

/// The most grants [`net_release`] follows at once.
pub const MAX_OUTSTANDING: usize = 64;

/// How a journal ends, as far as an append cares: what goes before the appended line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(&'static [u8]);

/// How `journal` (its bytes now, read under the lock) ends: an empty one needs the version
/// line (or what a crash left unwritten of it); a torn last line needs a newline, so the torn
/// part stays a line of its own, which readers skip. None for a journal of another version,
/// which nothing may be appended to.
pub fn tail(journal: &[u8]) -> Option<Tail> {
    if VERSION_LINE.starts_with(journal) {
        return Some(Tail(&VERSION_LINE[journal.len()..]));
    }
    body(journal)?;
    Some(Tail(if torn(journal) { b"\n" } else { b"" }))
}

/// What to append to a journal that ends as `tail` says to release `id` (a plain id) at `time`
/// from the ledger of `generation`, written into `out`: its length, or None when it does not
/// fit.
pub fn release_line(
    id: &[u8],
    time: u64,
    generation: u64,
    tail: Tail,
    out: &mut [u8],
) -> Option<usize> {
    if !is_plain_id(id) {
        return None;
    }
    let mut w = Writer { out, at: 0 };
    w.put(tail.0)?;
    w.put(id)?;
    w.put(b" ")?;
    w.number(time)?;
    w.put(b" ")?;
    w.number(generation)?;
    w.put(b";\n")?;
    Some(w.at)
}

/// What to append to a journal that ends as `tail` says to grant `instance` to `id` (plain
/// ids), as [`release_line`].
#[allow(clippy::too_many_arguments)]
pub fn grant_line(
    instance: &[u8],
    id: &[u8],
    time: u64,
    generation: u64,
    runtime_root: Option<&[u8]>,
    latency_us: u64,
    tail: Tail,
    out: &mut [u8],
) -> Option<usize> {
    if !is_plain_id(instance) || !is_plain_id(id) || !runtime_root.is_none_or(is_plain_root) {
        return None;
    }
    let mut w = Writer { out, at: 0 };
    w.put(tail.0)?;
    w.put(b"+")?;
    w.put(instance)?;
    w.put(b" ")?;
    w.put(id)?;
    w.put(b" ")?;
    w.number(time)?;
    w.put(b" ")?;
    w.number(generation)?;
    w.put(b" ")?;
    w.put(runtime_root.unwrap_or(b"-"))?;
    w.put(b" ")?;
    w.number(latency_us)?;
    w.put(b";\n")?;
    Some(w.at)
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.at.checked_add(b.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(b);
        self.at = end;
        Some(())
    }

    fn number(&mut self, v: u64) -> Option<()> {
        self.put(decimal::format(v, &mut [0u8; 20]))
    }
}

/// Whether a journal's last line is torn (a write cut short).
fn torn(journal: &[u8]) -> bool {
    journal.last().is_some_and(|&b| b != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Nothing before the line: a journal that ends with a whole line.
    const NONE: Tail = Tail(b"");

    enum L<'a> {
        R(&'a [u8], u64, u64),
        G(&'a [u8], &'a [u8], u64, u64, Option<&'a [u8]>, u64),
    }

    fn written(parts: &[L]) -> Vec<u8> {
        let mut j = Vec::new();
        for p in parts {
            let mut buf = [0u8; 200];
            let n = match *p {
                L::R(id, t, g) => release_line(id, t, g, tail(&j).unwrap(), &mut buf),
                L::G(inst, id, t, g, root, us) => {
                    grant_line(inst, id, t, g, root, us, tail(&j).unwrap(), &mut buf)
                }
            }
            .unwrap();
            j.extend_from_slice(&buf[..n]);
        }
        j
    }

    #[test]
    fn lines_round_trip() {
        let j = written(&[
            L::R(b"abc", 0, 7),
            L::G(
                b"MIG-1a-2b",
                b"my_ctr.1+x-2",
                1795580185,
                0,
                Some(b"/run/runc"),
                412,
            ),
            L::G(b"MIG-3", b"z", u64::MAX, u64::MAX, None, 0),
        ]);
        let v = VERSION_LINE.len();
        assert_eq!(&j[..v + 9], b"#gpushare-journal 1\nabc 0 7;\n");
        let got: Vec<_> = entries(&j).collect();
        assert_eq!(
            got,
            [
                Entry::Release {
                    id: b"abc",
                    time: 0,
                    generation: 7
                },
                Entry::Grant {
                    instance: b"MIG-1a-2b",
                    id: b"my_ctr.1+x-2",
                    time: 1795580185,
                    generation: 0,
                    runtime_root: Some(b"/run/runc"),
                    latency_us: 412
                },
                Entry::Grant {
                    instance: b"MIG-3",
                    id: b"z",
                    time: u64::MAX,
                    generation: u64::MAX,
                    runtime_root: None,
                    latency_us: 0
                },
            ]
        );
        assert_eq!(of_generation(&j, 7).count(), 1);
    }

    #[test]
    fn the_journal_decides_what_the_ledger_still_holds() {
        let ledger =
            br#"{"format":1,"generation":5,"instances":[{"lease":{"container_id":"c1"}}]}"#;
        assert!(may_hold(ledger, b"", b"c1"));
        assert!(!may_hold(ledger, b"", b"c2"));
        assert!(!may_hold(ledger, b"c1 9 5;\n", b"c1"));
        assert!(
            may_hold(ledger, b"c1 9 4;\n", b"c1"),
            "a line of another generation"
        );
        assert!(may_hold(ledger, b"c2 9 5;\n", b"c1"));
        let granted = written(&[L::G(b"MIG-1", b"c2", 9, 5, None, 1)]);
        assert!(may_hold(ledger, &granted, b"c2"), "granted by the journal");
        let regranted = written(&[
            L::G(b"MIG-1", b"c2", 9, 5, None, 1),
            L::R(b"c2", 10, 5),
            L::G(b"MIG-1", b"c2", 11, 5, None, 1),
        ]);
        assert!(may_hold(ledger, &regranted, b"c2"), "the last line wins");
        let old = br#"{"format":1,"instances":[{"lease":{"container_id":"c1"}}]}"#;
        assert!(
            may_hold(old, b"c1 9 5;\n", b"c1"),
            "no generation: no line is known to apply"
        );
        let reordered = br#"{"compute_mode_records":false,"format":1,"generation":5}"#;
        assert!(
            may_hold(reordered, &granted, b"c2"),
            "no header: a journaled grant may apply"
        );
        assert!(!may_hold(reordered, &granted, b"c3"));
    }

    #[test]
    fn a_marker_stands_for_the_ledger_and_the_journal_still_decides() {
        let g = 5;
        assert!(may_hold_after(b"", g, b"c1", true), "a marker: maybe");
        assert!(!may_hold_after(b"", g, b"c1", false), "none: nothing");
        assert!(
            !may_hold_after(b"c1 9 5;\n", g, b"c1", true),
            "released since"
        );
        assert!(
            may_hold_after(b"c1 9 4;\n", g, b"c1", true),
            "another generation"
        );
        let granted = written(&[L::G(b"MIG-1", b"c2", 9, g, None, 1)]);
        assert!(
            may_hold_after(&granted, g, b"c2", false),
            "granted by the journal"
        );
        assert!(
            may_hold_after(b"#gpushare-journal 2\n", g, b"c3", false),
            "foreign"
        );
    }

    #[test]
    fn offers_apply_while_the_journal_nets_out_to_at_most_one_release() {
        let g = 5;
        assert_eq!(net_release(b"", g), Some(None));
        let one = written(&[L::R(b"c1", 1, g)]);
        assert_eq!(net_release(&one, g), Some(Some(&b"c1"[..])));
        let cycled = written(&[
            L::R(b"c1", 1, g),
            L::G(b"MIG-1", b"c2", 2, g, None, 1),
            L::R(b"c2", 3, g),
            L::G(b"MIG-1", b"c3", 4, g, None, 1),
            L::R(b"c3", 5, g),
        ]);
        assert_eq!(net_release(&cycled, g), Some(Some(&b"c1"[..])));
        let held = written(&[L::G(b"MIG-1", b"c2", 2, g, None, 1)]);
        assert_eq!(net_release(&held, g), None, "a grant still held");
        let two = written(&[L::R(b"c1", 1, g), L::R(b"c9", 1, g)]);
        assert_eq!(
            net_release(&two, g),
            None,
            "two of the ledger's leases released"
        );
        let stale = written(&[L::G(b"MIG-1", b"c2", 2, g - 1, None, 1)]);
        assert_eq!(
            net_release(&stale, g),
            Some(None),
            "another generation's lines"
        );
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let mut j = written(&[L::R(b"a", 1, 3)]);
        j.extend_from_slice(b"b 17"); // cut short by a crash
        assert!(torn(&j));
        assert_eq!(entries(&j).count(), 1, "an unfinished line is not read");
        let mut buf = [0u8; 32];
        let n = release_line(b"c", 5, 3, tail(&j).unwrap(), &mut buf).unwrap();
        j.extend_from_slice(&buf[..n]);
        let got: Vec<_> = entries(&j).map(|e| e.id()).collect();
        assert_eq!(
            got,
            [&b"a"[..], &b"c"[..]],
            "the torn part is its own line, skipped"
        );
        for bad in [
            &b"x;\n"[..],
            b"x 1;\n",
            b"x y 1;\n",
            b" 1 1;\n",
            b"a\"b 1 1;\n",
            b"a 1 2 3;\n",
            b"a 99999999999999999999 1;\n",
            b"a  1;\n",
            b"a 1 1\n",
            b"+MIG-1 c 1 1 - 1\n",
            b"+MIG-1 c 1 1 run 1;\n",
            b"+MIG-1 c 1 1 - 1 2;\n",
            b"+MIG 1 c 1 1 - 1;\n",
            b"+MIG-1 c 1 1 -;\n",
        ] {
            assert_eq!(entries(bad).count(), 0, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn only_plain_ids_and_roots_are_journaled() {
        let mut buf = [0u8; 2048];
        for bad in [&b""[..], b"a b", b"a\nb", b"a/b", b"\xff", b"a\"b", b"a\\b"] {
            assert!(!is_plain_id(bad));
            assert_eq!(release_line(bad, 1, 1, NONE, &mut buf), None);
            assert_eq!(
                grant_line(b"MIG-1", bad, 1, 1, None, 0, NONE, &mut buf),
                None
            );
            assert_eq!(grant_line(bad, b"c", 1, 1, None, 0, NONE, &mut buf), None);
        }
        for bad in [
            &b"run/runc"[..],
            b"/run/a b",
            b"/run/a;b",
            b"",
            b"/a\x01",
            b"/run/r\xfcnc",
        ] {
            assert_eq!(
                grant_line(b"MIG-1", b"c", 1, 1, Some(bad), 0, NONE, &mut buf),
                None
            );
        }
        assert!(release_line(&[b'a'; MAX_ID], 1, 1, NONE, &mut buf).is_some());
        assert!(release_line(&[b'a'; MAX_ID + 1], 1, 1, NONE, &mut buf).is_none());
        assert!(release_line(b"abc", 1, 1, NONE, &mut buf[..8]).is_none());
        assert!(release_line(b"abc", 1, 1, NONE, &mut buf[..9]).is_some());
    }

    #[test]
    fn the_first_append_writes_the_version_line() {
        let mut buf = [0u8; 64];
        let n = release_line(b"a", 1, 2, tail(b"").unwrap(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"#gpushare-journal 1\na 1 2;\n");
        let n = release_line(b"b", 1, 2, tail(&buf[..n]).unwrap(), &mut [0u8; 64]).unwrap();
        assert_eq!(n, 7, "no second version line");
        // A first write cut short inside the version line: the next one completes it.
        let cut = &VERSION_LINE[..5];
        assert!(!is_foreign(cut) && entries(cut).count() == 0);
        let mut j = std::vec::Vec::from(cut);
        let n = release_line(b"c", 1, 2, tail(&j).unwrap(), &mut buf).unwrap();
        j.extend_from_slice(&buf[..n]);
        assert_eq!(j, b"#gpushare-journal 1\nc 1 2;\n");
        assert_eq!(entries(&j).count(), 1);
    }

    #[test]
    fn a_journal_from_before_the_version_line_is_read_as_version_1() {
        let old = b"a 1 5;\n+MIG-1 b 2 5 - 3;\n";
        assert!(!is_foreign(old));
        assert_eq!(entries(old).count(), 2);
        assert_eq!(net_release(old, 5), None, "b still holds MIG-1");
        let mut buf = [0u8; 64];
        let n = release_line(b"b", 3, 5, tail(old).unwrap(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"b 3 5;\n", "appended to as it is");
        // A container named like the version word is still a line.
        assert_eq!(entries(b"gpushare-journal 1 5;\n").count(), 1);
    }

    #[test]
    fn a_journal_of_another_version_is_neither_read_nor_appended_to() {
        for other in [
            &b"#gpushare-journal 2\na 1 5;\n"[..],
            b"#gpushare-journal 10\n",
            b"#gpushare-journal 1 \n",
            b"#x",
        ] {
            assert!(is_foreign(other), "{:?}", core::str::from_utf8(other));
            assert_eq!(entries(other).count(), 0);
            assert_eq!(tail(other), None);
            assert_eq!(net_release(other, 5), None);
            assert!(may_hold(br#"{"format":1,"generation":5}"#, other, b"zz"));
        }
        assert_eq!(
            first_line(b"#gpushare-journal 2\na 1 5;\n"),
            b"#gpushare-journal 2"
        );
    }
}
