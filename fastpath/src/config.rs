//! The two keys of gpushare's config the entry binary needs (`runtime`, `state_dir`), read from
//! the top of the TOML file with no parser. Anything this reader does not fully understand
//! makes it give up, and the full wrapper, which parses the whole file, takes over.

pub const DEFAULT_PATH: &[u8] = b"/etc/gpushare/config.toml";
pub const ENV_CONFIG: &[u8] = b"GPUSHARE_CONFIG";
pub const DEFAULT_STATE_DIR: &[u8] = gpushare_state::DEFAULT_DIR.as_bytes();

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopLevel<'a> {
    pub runtime: Option<&'a [u8]>,
    pub state_dir: Option<&'a [u8]>,
}

/// The top-level `runtime` and `state_dir`, or None when the file holds anything before its
/// first table that is not a comment or a `key = "plain string"` line, or is not UTF-8.
pub fn scan(text: &[u8]) -> Option<TopLevel<'_>> {
    core::str::from_utf8(text).ok()?;
    let mut top = TopLevel::default();
    for line in text.split(|&b| b == b'\n') {
        let line = trim(line.strip_suffix(b"\r").unwrap_or(line));
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        if line[0] == b'[' {
            break;
        }
        let eq = line.iter().position(|&b| b == b'=')?;
        let key = trim(&line[..eq]);
        let valid_key = !key.is_empty()
            && key
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_key {
            return None;
        }
        let value = string_value(trim(&line[eq + 1..]))?;
        let slot = match key {
            b"runtime" => &mut top.runtime,
            b"state_dir" => &mut top.state_dir,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return None; // a key given twice: invalid TOML
        }
    }
    Some(top)
}

/// `"text"` or `'text'`, then nothing but a comment. Escapes and multi-line strings are left
/// to the full parser.
fn string_value(v: &[u8]) -> Option<&[u8]> {
    let quote = *v.first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let body = &v[1..];
    let end = body.iter().position(|&b| b == quote)?;
    let (inner, rest) = (&body[..end], trim(&body[end + 1..]));
    let plain = !inner
        .iter()
        .any(|&b| b == b'\\' || (b < 0x20 && b != b'\t') || b == 0x7f);
    if !plain || inner.is_empty() || !(rest.is_empty() || rest[0] == b'#') {
        return None;
    }
    Some(inner)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_two_keys_before_the_first_table() {
        let t = scan(b"# c\nruntime = \"/usr/bin/crun\" # why\r\n  state_dir='/run/g'\nnvml_library = \"x\"\n[pool]\nruntime = 5\n").unwrap();
        assert_eq!(t.runtime, Some(&b"/usr/bin/crun"[..]));
        assert_eq!(t.state_dir, Some(&b"/run/g"[..]));
        assert_eq!(scan(b"").unwrap(), TopLevel::default());
        assert_eq!(
            scan(b"[log]\nlevel = \"x\"\n").unwrap(),
            TopLevel::default()
        );
    }

    #[test]
    fn gives_up_on_anything_it_does_not_fully_understand() {
        for bad in [
            &b"runtime = \"/a\\\"b\"\n"[..],   // escapes
            b"runtime = \"\"\"\n/x\n\"\"\"\n", // multi-line
            b"runtime = '''/x'''\n",
            b"runtime = \"/a\"\nruntime = \"/b\"\n", // twice
            b"\"runtime\" = \"/x\"\n",               // quoted key
            b"pool.lock_timeout_ms = 5\n",           // dotted key, not a string
            b"runtime = \"/x\" trailing\n",
            b"runtime = \n",
            b"runtime = \"\"\n",
            b"runtime\n",
            b"runtime = \"/x\xff\"\n", // not UTF-8
            b"\xef\xbb\xbfruntime = \"/x\"\n",
        ] {
            assert_eq!(scan(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }
}
