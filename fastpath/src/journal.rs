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

use crate::decimal;

/// The journal's file name inside the state directory.
pub const FILE: &[u8] = b"journal";
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
        && root.len() <= 4096
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

/// The journal's well-formed lines, in order; anything else (a line torn by a crash) is skipped.
pub fn entries(journal: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let complete = match journal.iter().rposition(|&b| b == b'\n') {
        Some(i) => &journal[..i],
        None => &journal[..0],
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
/// "maybe" only costs a locked look.
pub fn may_hold(ledger: &[u8], journal: &[u8], id: &[u8]) -> bool {
    let mut held = crate::scan::may_mention(ledger, id);
    if let Some(g) = generation(ledger) {
        for e in of_generation(journal, g).filter(|e| e.id() == id) {
            held = matches!(e, Entry::Grant { .. });
        }
    }
    held
}

/// How the journal of generation `g` leaves the ledger's leases, when that is simple enough
/// for the ledger's offers to still apply: every grant it holds released again, and at most
/// one lease of the ledger itself released (`Some(Some(id))`; `Some(None)`: none). None for
/// anything else. One pass, with room for [`MAX_OUTSTANDING`] grants held at once.
pub fn net_release(journal: &[u8], g: u64) -> Option<Option<&[u8]>> {
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

/// The ledger's generation: the ledger writer puts it right after the format, so that the
/// hook reads it with no parser. None for a ledger that does not start that way.
pub fn generation(ledger: &[u8]) -> Option<u64> {
    let rest = ledger.strip_prefix(b"{\"format\":1,\"generation\":")?;
    let end = rest.iter().position(|&b| b == b',' || b == b'}')?;
    decimal::parse(&rest[..end])
}

/// The line that releases `id` (a plain id) at `time` from the ledger of `generation`, written
/// into `out`; its length, or None when it does not fit. After a torn last line a newline
/// comes first, so the torn part stays a line of its own, which readers skip.
pub fn release_line(
    id: &[u8],
    time: u64,
    generation: u64,
    after_torn: bool,
    out: &mut [u8],
) -> Option<usize> {
    if !is_plain_id(id) {
        return None;
    }
    let mut w = Writer { out, at: 0 };
    if after_torn {
        w.put(b"\n")?;
    }
    w.put(id)?;
    w.put(b" ")?;
    w.number(time)?;
    w.put(b" ")?;
    w.number(generation)?;
    w.put(b";\n")?;
    Some(w.at)
}

/// The line that grants `instance` to `id` (plain ids), as [`release_line`] writes one.
#[allow(clippy::too_many_arguments)]
pub fn grant_line(
    instance: &[u8],
    id: &[u8],
    time: u64,
    generation: u64,
    runtime_root: Option<&[u8]>,
    latency_us: u64,
    after_torn: bool,
    out: &mut [u8],
) -> Option<usize> {
    if !is_plain_id(instance) || !is_plain_id(id) || !runtime_root.is_none_or(is_plain_root) {
        return None;
    }
    let mut w = Writer { out, at: 0 };
    if after_torn {
        w.put(b"\n")?;
    }
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
pub fn torn(journal: &[u8]) -> bool {
    journal.last().is_some_and(|&b| b != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    enum L<'a> {
        R(&'a [u8], u64, u64),
        G(&'a [u8], &'a [u8], u64, u64, Option<&'a [u8]>, u64),
    }

    fn written(parts: &[L]) -> Vec<u8> {
        let mut j = Vec::new();
        for p in parts {
            let mut buf = [0u8; 200];
            let n = match *p {
                L::R(id, t, g) => release_line(id, t, g, torn(&j), &mut buf),
                L::G(inst, id, t, g, root, us) => {
                    grant_line(inst, id, t, g, root, us, torn(&j), &mut buf)
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
        assert_eq!(&j[..9], b"abc 0 7;\n");
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
            "no generation: no journal"
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
    fn the_generation_is_read_from_the_ledgers_start() {
        assert_eq!(
            generation(br#"{"format":1,"generation":42,"gpus":[]}"#),
            Some(42)
        );
        assert_eq!(generation(br#"{"format":1,"generation":0}"#), Some(0));
        for bad in [
            &br#"{"format":1,"gpus":[],"generation":4}"#[..],
            br#"{"format":2,"generation":4,"gpus":[]}"#,
            br#"{"format":1,"generation":-4,"gpus":[]}"#,
            br#"{"format":1,"generation":"4","gpus":[]}"#,
            br#"{"format":1,"generation":4"#,
            b"",
        ] {
            assert_eq!(generation(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let mut j = written(&[L::R(b"a", 1, 3)]);
        j.extend_from_slice(b"b 17"); // cut short by a crash
        assert!(torn(&j));
        assert_eq!(entries(&j).count(), 1, "an unfinished line is not read");
        let mut buf = [0u8; 32];
        let n = release_line(b"c", 5, 3, torn(&j), &mut buf).unwrap();
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
            assert_eq!(release_line(bad, 1, 1, false, &mut buf), None);
            assert_eq!(
                grant_line(b"MIG-1", bad, 1, 1, None, 0, false, &mut buf),
                None
            );
            assert_eq!(grant_line(bad, b"c", 1, 1, None, 0, false, &mut buf), None);
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
                grant_line(b"MIG-1", b"c", 1, 1, Some(bad), 0, false, &mut buf),
                None
            );
        }
        assert!(release_line(&[b'a'; MAX_ID], 1, 1, false, &mut buf).is_some());
        assert!(release_line(&[b'a'; MAX_ID + 1], 1, 1, false, &mut buf).is_none());
        assert!(release_line(b"abc", 1, 1, false, &mut buf[..8]).is_none());
        assert!(release_line(b"abc", 1, 1, false, &mut buf[..9]).is_some());
    }
}
