//! The container id in the OCI state document a runtime gives a hook on stdin, read with no
//! allocator. Only the plain case is answered: a document with any escape, a precreate lease
//! annotation, a repeated or non-plain `id`, or anything that is not a JSON object gets None,
//! and the full hook (which parses it properly) decides.

use crate::json::Kind;
use gpushare_state::journal::is_plain_id;

/// The state's `id`, when the document is plain enough to be sure of it.
pub fn container_id(state: &[u8]) -> Option<&[u8]> {
    if state.contains(&b'\\') || crate::scan::contains(state, b"gpushare.lease") {
        return None;
    }
    let (json, root) = crate::json::object(state).ok()?;
    let id = json.get_kind(root, b"id", Kind::String).ok()??;
    json.text(id).ok().filter(|i| is_plain_id(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runc_and_crun_states() {
        let runc = include_bytes!("../../fixtures/state/runc.json");
        assert_eq!(container_id(runc), Some(&b"c1"[..]));
        let crun = include_bytes!("../../fixtures/state/crun.json");
        assert_eq!(container_id(crun), Some(&b"c1"[..]));
        // An `id` nested in the annotations is not the container's.
        let nested = br#"{"annotations":{"gpu.profile":"1g.10gb","id":"x"},"id":"c1"}"#;
        assert_eq!(container_id(nested), Some(&b"c1"[..]));
        let spaced = b" {\n \"pid\" : -1.5e3 , \"ok\": [true, null, {\"id\": \"no\"}, []], \"id\" : \"a.b-c_d+e\" }\n";
        assert_eq!(container_id(spaced), Some(&b"a.b-c_d+e"[..]));
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_hook() {
        for bad in [
            &br#"{"id":"c\u0031"}"#[..],
            br#"{"id":"c1","annotations":{"gpushare.lease":"precreate-00"}}"#,
            br#"{"id":"c1","id":"c2"}"#,
            br#"{"id":"a b"}"#,
            br#"{"id":""}"#,
            br#"{"id":1}"#,
            br#"{"status":"stopped"}"#,
            br#"{}"#,
            br#"["id","c1"]"#,
            br#"{"id":"c1"} x"#,
            br#"{"id":"c1""#,
            br#"{"id":"c1",}"#,
            br#"{"a":[1,],"id":"c1"}"#,
            b"{\"id\":\"c\x01\"}",
            b"",
        ] {
            assert_eq!(container_id(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let mut s = std::vec::Vec::new();
        s.extend_from_slice(br#"{"a":"#);
        s.extend(core::iter::repeat_n(b'[', 10_000));
        s.extend(core::iter::repeat_n(b']', 10_000));
        s.extend_from_slice(br#","id":"c1"}"#);
        assert_eq!(container_id(&s), None);
    }
}
