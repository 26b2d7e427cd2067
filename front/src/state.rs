//! The container id in the OCI state document a runtime gives a hook on stdin, read with no
//! allocator. Only the plain case is answered: a document with any escape, a precreate lease
//! annotation, a repeated or non-plain `id`, or anything that is not a JSON object gets None,
//! and the full hook (which parses it properly) decides.

use crate::journal::is_plain_id;

/// The state's `id`, when the document is plain enough to be sure of it.
pub fn container_id(state: &[u8]) -> Option<&[u8]> {
    if state.contains(&b'\\') || crate::scan::contains(state, b"gpushare.lease") {
        return None;
    }
    let mut p = Parser { s: state, at: 0 };
    p.ws();
    p.eat(b'{')?;
    let mut id = None;
    p.ws();
    if p.peek() == Some(b'}') {
        return None;
    }
    loop {
        p.ws();
        let key = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        if key == b"id" {
            if id.is_some() {
                return None;
            }
            id = Some(p.string()?);
        } else {
            p.value(0)?;
        }
        p.ws();
        match p.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    p.ws();
    if p.at != state.len() {
        return None;
    }
    id.filter(|i| is_plain_id(i))
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string with no escapes (the caller refused any backslash), its raw bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        let len = self.s[start..].iter().position(|&b| b == b'"')?;
        let body = &self.s[start..start + len];
        if body.iter().any(|&b| b < 0x20) {
            return None;
        }
        self.at = start + len + 1;
        Some(body)
    }

    fn value(&mut self, depth: u32) -> Option<()> {
        if depth > 64 {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let close = if self.next()? == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    if close == b'}' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => {
                // A number or a literal: its characters up to a delimiter.
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runc_and_crun_states() {
        let runc = br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","pid":0,"bundle":"/run/b","annotations":{"gpu.profile":"1g.10gb","id":"x"}}"#;
        assert_eq!(container_id(runc), Some(&b"c1"[..]));
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
