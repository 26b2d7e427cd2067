//! Byte scans that answer "certainly not" cheaply, before anything is parsed.

/// gpushare never reads a spec larger than this (a runtime would choke on it long before).
pub const MAX_SPEC_BYTES: u64 = 8 << 20;

/// Whether a spec could hold a GPU request: every request is an annotation `gpu.*` or an env
/// variable `GPUSHARE_*`, so a spec with neither string asks for nothing. A name can also be
/// written with JSON escapes (`"\u0067pu.profile"`); engines escape only `<`, `>`, `&` and
/// control characters, so a spec that escapes a letter, digit, `.` or `_` is read in full.
pub fn may_contain_request(raw: &[u8]) -> bool {
    contains(raw, b"\"gpu.") || contains(raw, b"GPUSHARE_") || escapes_a_name_char(raw)
}

fn escapes_a_name_char(raw: &[u8]) -> bool {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut at = 0;
    while let Some(i) = find(&raw[at..], b"\\u00") {
        let start = at + i;
        // An even run of backslashes before it is an escaped backslash, not an escape.
        let slashes = raw[..start]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if slashes % 2 == 0 {
            if let (Some(h), Some(l)) = (
                raw.get(start + 4).and_then(|&b| hex(b)),
                raw.get(start + 5).and_then(|&b| hex(b)),
            ) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
                    return true;
                }
            }
        }
        at = start + 1;
    }
    false
}

/// Names of the spec's fields that gpushare reads or writes, or that decide which devices a
/// container may open. runc reads its spec with Go's `encoding/json`, which takes a key that
/// matches a field's name only when letters are folded to one case (`"Major"`, `"DEVICES"`,
/// even `"deviceſ"`) as that field; serde_json (and this crate) take only the exact name.
/// Such a spelling would make gpushare and runc read two different specs, so a spec with one
/// is not read (see [`case_variant`]).
pub const RUNTIME_FIELDS: &[&str] = &[
    "access",
    "allow",
    "ambient",
    "annotations",
    "args",
    "bounding",
    "capabilities",
    "createContainer",
    "createRuntime",
    "destination",
    "devices",
    "effective",
    "env",
    "fileMode",
    "gid",
    "hooks",
    "inheritable",
    "linux",
    "major",
    "minor",
    "mounts",
    "options",
    "path",
    "permitted",
    "poststart",
    "poststop",
    "prestart",
    "process",
    "resources",
    "source",
    "startContainer",
    "timeout",
    "type",
    "uid",
];

/// The field of [`RUNTIME_FIELDS`] that an ASCII `key` spells in another case, if any (an
/// exact name is not a variant). Keys with other characters are the caller's to refuse.
pub fn case_variant(key: &[u8]) -> Option<&'static str> {
    case_variant_of(key, key.iter().any(u8::is_ascii_uppercase))
}

/// [`case_variant`] for a key whose upper-case letters the caller already looked for.
pub(crate) fn case_variant_of(key: &[u8], has_upper: bool) -> Option<&'static str> {
    // Every spec key passes here on the entry binary's warm path: a key with no upper-case
    // letter (nearly all of them) can only be a lower-cased camelCase field.
    let fields: &[&'static str] = match has_upper {
        true => RUNTIME_FIELDS,
        false => CAMEL_CASE_FIELDS,
    };
    fields
        .iter()
        .find(|f| {
            f.len() == key.len() && f.as_bytes() != key && f.as_bytes().eq_ignore_ascii_case(key)
        })
        .copied()
}

/// The fields of [`RUNTIME_FIELDS`] with an upper-case letter.
const CAMEL_CASE_FIELDS: &[&str] = &[
    "createContainer",
    "createRuntime",
    "fileMode",
    "startContainer",
];

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

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Where `needle` first occurs in `hay`.
///
/// Eight places at a time, a place compared in full only where the needle's first and last
/// bytes both match. A grant, a delete and a release each scan the whole ledger (hundreds of
/// KiB on a node of many GPUs), whose UUIDs and JSON keys match a container id's or a key's
/// first byte at every few bytes: a byte-by-byte search for the first byte alone made the scan
/// grow to a quarter of a warm grant's own time on a 64-GPU node.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    let n = needle.len();
    let (&first, &last) = (needle.first()?, needle.last()?);
    let last_start = hay.len().checked_sub(n)?;
    let (first8, last8) = (ONES * first as u64, ONES * last as u64);
    let word = |at: usize| u64::from_le_bytes(hay[at..at + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    // Places i..i+8 all start a whole needle's room, and both words lie inside `hay`.
    while i + 7 <= last_start {
        let mut candidates = zero_bytes(word(i) ^ first8) & zero_bytes(word(i + n - 1) ^ last8);
        while candidates != 0 {
            let at = i + candidates.trailing_zeros() as usize / 8;
            if &hay[at..at + n] == needle {
                return Some(at);
            }
            candidates &= candidates - 1;
        }
        i += 8;
    }
    (i..=last_start).find(|&at| &hay[at..at + n] == needle)
}

/// The top bit of each byte of `x` that is zero, and nothing else.
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_annotations_or_env() {
        assert!(may_contain_request(
            br#"{"annotations":{"gpu.profile":"1g.10gb"}}"#
        ));
        assert!(may_contain_request(
            br#"{"process":{"env":["GPUSHARE_PROFILE=x"]}}"#
        ));
        assert!(!may_contain_request(
            br#"{"annotations":{"gpux":"1"},"env":["GPU=1"]}"#
        ));
        assert!(!may_contain_request(b""));
        // Escaped names are read in full; what engines escape is not a name.
        assert!(may_contain_request(
            br#"{"annotations":{"\u0067pu.profile":"1g.10gb"}}"#
        ));
        assert!(may_contain_request(
            br#"{"env":["GPU\u0053HARE_PROFILE=1g.10gb"]}"#
        ));
        assert!(may_contain_request(br#"{"a":"gpu\u002eprofile"}"#));
        assert!(!may_contain_request(
            br#"{"args":["sh","-c","a \u0026\u0026 b \u003e c"]}"#
        ));
        assert!(
            !may_contain_request(br#"{"a":"\\u0067"}"#),
            "an escaped backslash"
        );
        assert!(!may_contain_request(br#"{"a":"\u00"}"#));
    }

    #[test]
    fn case_variants_of_the_fields_runc_reads() {
        assert_eq!(case_variant(b"Major"), Some("major"));
        assert_eq!(case_variant(b"DEVICES"), Some("devices"));
        assert_eq!(case_variant(b"filemode"), Some("fileMode"));
        assert_eq!(case_variant(b"major"), None);
        assert_eq!(case_variant(b"majors"), None);
        assert_eq!(case_variant(b"gpu.profile"), None);
        assert_eq!(case_variant(b"createruntime"), Some("createRuntime"));
        let camel: std::vec::Vec<&str> = RUNTIME_FIELDS
            .iter()
            .copied()
            .filter(|f| f.bytes().any(|b| b.is_ascii_uppercase()))
            .collect();
        assert_eq!(camel, CAMEL_CASE_FIELDS);
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
    fn find_agrees_with_a_naive_search() {
        let hays: [&[u8]; 5] = [b"", b"a", b"aaab", b"abababc", b"xyzzy\"gpu.\""];
        let needles: [&[u8]; 6] = [b"a", b"ab", b"abc", b"aab", b"\"gpu.", b"zz"];
        for h in hays {
            for n in needles {
                let naive = h.windows(n.len()).position(|w| w == n);
                assert_eq!(find(h, n), naive, "{h:?} {n:?}");
            }
        }
        assert_eq!(find(b"abc", b""), None);
        // Hays of every length across three eight-byte steps, each byte 'a' or 'b' (from
        // the bits of k): every needle of up to 4 bytes, and longer parts of the hay itself.
        let over_ab = |bits: usize, len: usize| -> std::vec::Vec<u8> {
            (0..len)
                .map(|j| [b'a', b'b'][bits >> (j % 10) & 1])
                .collect()
        };
        let short: std::vec::Vec<_> = (1..=4)
            .flat_map(|n| (0..1usize << n).map(move |k| over_ab(k, n)))
            .collect();
        for len in 0..=26 {
            for k in (0..1024).step_by(7) {
                let hay = over_ab(k, len);
                let parts = (0..len).flat_map(|a| (a + 5..=len.min(a + 12)).map(move |b| (a, b)));
                let parts: std::vec::Vec<_> = parts.map(|(a, b)| hay[a..b].to_vec()).collect();
                for needle in short.iter().chain(&parts) {
                    let naive = hay.windows(needle.len()).position(|w| w == &needle[..]);
                    assert_eq!(find(&hay, needle), naive, "{hay:?} {needle:?}");
                }
            }
        }
    }

    #[test]
    fn zero_bytes_marks_exactly_the_zero_bytes() {
        // Each byte of a word at each value, the other seven at values where a carry or a
        // borrow between bytes would show.
        for other in [0x00u8, 0x01, 0x7f, 0x80, 0xff] {
            for at in 0..8 {
                for v in 0..=255u8 {
                    let mut w = [other; 8];
                    w[at] = v;
                    let want = u64::from_le_bytes(w.map(|b| if b == 0 { 0x80 } else { 0 }));
                    assert_eq!(zero_bytes(u64::from_le_bytes(w)), want, "{w:?}");
                }
            }
        }
    }
}
