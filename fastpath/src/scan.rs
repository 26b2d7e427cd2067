//! Byte scans that answer "certainly not" cheaply, before anything is parsed.

pub use gpushare_state::bytes::{contains, find};

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
}
