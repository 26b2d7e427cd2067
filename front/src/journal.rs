//! The release journal: how a container's poststop hook releases its slice without loading
//! the ledger. The hook appends one line, `<container id> <unix seconds>\n`, under the
//! ledger's lock; the next process that loads the ledger under that lock applies every line
//! (a release, as if made at that time) and empties the journal when it next writes the
//! ledger. Readers that do not lock (status, the entry binary's `delete`) apply it in memory.
//!
//! A line is only ever appended for a lease the ledger holds at that moment, and no new lease
//! is written without the journal being applied and emptied first, so a line can only name
//! the lease that existed when it was written, even if an engine reuses the id later.

/// The journal's file name inside the state directory.
pub const FILE: &[u8] = b"released";
/// Past this size the hook leaves the release to the full hook, which folds the journal.
pub const MAX_BYTES: usize = 64 << 10;
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

/// One release: the container, when, and the ledger generation it was written against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub id: &'a [u8],
    pub time: u64,
    pub generation: u64,
}

/// The journal's well-formed lines, in order; anything else (a line torn by a crash) is skipped.
pub fn entries(journal: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let complete = match journal.iter().rposition(|&b| b == b'\n') {
        Some(i) => &journal[..i],
        None => &journal[..0],
    };
    complete.split(|&b| b == b'\n').filter_map(parse_line)
}

fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    // The `;` tells a whole line from the start of one a crash cut short.
    let line = line.strip_suffix(b";")?;
    let mut words = line.split(|&b| b == b' ');
    let (id, time, generation) = (
        words.next()?,
        number(words.next()?)?,
        number(words.next()?)?,
    );
    if words.next().is_some() || !is_plain_id(id) {
        return None;
    }
    Some(Entry {
        id,
        time,
        generation,
    })
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether the journal releases `id` from the ledger of this `generation`.
pub fn lists(journal: &[u8], id: &[u8], generation: u64) -> bool {
    entries(journal).any(|e| e.id == id && e.generation == generation)
}

/// Whether the ledger, with its journal, could still hold anything of `id`'s: the ledger may
/// mention it and the journal does not release it. A false "maybe" only costs a locked look.
pub fn may_hold(ledger: &[u8], journal: &[u8], id: &[u8]) -> bool {
    crate::scan::may_mention(ledger, id)
        && !generation(ledger).is_some_and(|g| lists(journal, id, g))
}

/// The ledger's generation: the ledger writer puts it right after the format, so that the
/// hook reads it with no parser. None for a ledger that does not start that way.
pub fn generation(ledger: &[u8]) -> Option<u64> {
    let rest = ledger.strip_prefix(b"{\"format\":1,\"generation\":")?;
    let end = rest.iter().position(|&b| b == b',' || b == b'}')?;
    number(&rest[..end])
}

/// The line that releases `id` (a plain id) at `time` from the ledger of `generation`, written
/// into `out`; its length, or None when it does not fit. After a torn last line a newline
/// comes first, so the torn part stays a line of its own, which readers skip.
pub fn line(
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

    fn number(&mut self, mut v: u64) -> Option<()> {
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[n..])
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

    fn written(parts: &[(&[u8], u64, u64)]) -> Vec<u8> {
        let mut j = Vec::new();
        for (id, t, g) in parts {
            let mut buf = [0u8; 80];
            let n = line(id, *t, *g, torn(&j), &mut buf).unwrap();
            j.extend_from_slice(&buf[..n]);
        }
        j
    }

    #[test]
    fn lines_round_trip() {
        let j = written(&[
            (b"abc", 0, 7),
            (b"my_ctr.1+x-2", 1795580185, 0),
            (b"z", u64::MAX, u64::MAX),
        ]);
        assert_eq!(&j[..9], b"abc 0 7;\n");
        let got: Vec<_> = entries(&j).map(|e| (e.id, e.time, e.generation)).collect();
        assert_eq!(
            got,
            [
                (&b"abc"[..], 0, 7),
                (&b"my_ctr.1+x-2"[..], 1795580185, 0),
                (&b"z"[..], u64::MAX, u64::MAX)
            ]
        );
        assert!(lists(&j, b"abc", 7));
        assert!(!lists(&j, b"abc", 8), "another generation");
        assert!(!lists(&j, b"ab", 7));
    }

    #[test]
    fn a_journaled_release_ends_the_maybe() {
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
        let old = br#"{"format":1,"instances":[{"lease":{"container_id":"c1"}}]}"#;
        assert!(
            may_hold(old, b"c1 9 5;\n", b"c1"),
            "no generation: no journal"
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
        let mut j = written(&[(b"a", 1, 3)]);
        j.extend_from_slice(b"b 17"); // cut short by a crash
        assert!(torn(&j));
        assert_eq!(entries(&j).count(), 1, "an unfinished line is not read");
        let mut buf = [0u8; 32];
        let n = line(b"c", 5, 3, torn(&j), &mut buf).unwrap();
        j.extend_from_slice(&buf[..n]);
        let got: Vec<_> = entries(&j).map(|e| e.id).collect();
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
        ] {
            assert_eq!(entries(bad).count(), 0, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn only_plain_ids_are_journaled() {
        let mut buf = [0u8; 2048];
        for bad in [&b""[..], b"a b", b"a\nb", b"a/b", b"\xff", b"a\"b", b"a\\b"] {
            assert!(!is_plain_id(bad));
            assert_eq!(line(bad, 1, 1, false, &mut buf), None);
        }
        assert!(line(&[b'a'; MAX_ID], 1, 1, false, &mut buf).is_some());
        assert!(line(&[b'a'; MAX_ID + 1], 1, 1, false, &mut buf).is_none());
        assert!(line(b"abc", 1, 1, false, &mut buf[..8]).is_none());
        assert!(line(b"abc", 1, 1, false, &mut buf[..9]).is_some());
    }
}
