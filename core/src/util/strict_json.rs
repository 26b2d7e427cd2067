//! A spec read only where serde_json and runc read the same spec. runc decodes config.json with
//! Go's `encoding/json`, which differs from serde_json on what a tenant can write: a key given
//! twice in one object (serde_json keeps the last value; Go decodes both into the same field,
//! merging two objects), and a key that matches a field only with letters folded to one case
//! (Go takes `"Major"` or `"deviceſ"` as the field; serde_json does not). A spec with either
//! would be granted on one reading and run on another, so gpushare refuses it, naming the key.
//!
//! Used only where a spec asks for a GPU (the no-request path never parses); the value read is
//! exactly what `serde_json::from_slice` gives.

use gpushare_fastpath::scan::RUNTIME_FIELDS;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// Not JSON at all, or a key refused above; serde_json's message says where.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Read `raw` as JSON, refusing duplicate keys (compared as Go compares field names) and keys
/// that Go would take for a field gpushare reads under another spelling.
pub fn from_slice(raw: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = At(&Path::Root).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Where a value sits, for messages; rendered only when one is needed.
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("the top level"),
            Path::Key(Path::Root, k) => write!(f, "{k:?}"),
            Path::Key(p, k) => write!(f, "{p}.{k:?}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

/// The key as Go's decoder compares it with a field's name: each letter upper-cased by its
/// simple mapping (Go 1.21 and later), and the Kelvin sign as K (earlier Go folds it too).
fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c == '\u{212a}' {
                return 'K';
            }
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

struct At<'a>(&'a Path<'a>);

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for At<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(At(&Path::Index(self.0, out.len())))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // Folded key -> the key as written, to name both in a message.
        let mut seen: std::collections::HashMap<String, String> = Default::default();
        while let Some(key) = map.next_key::<String>()? {
            let folded = go_fold(&key);
            if let Some(field) = RUNTIME_FIELDS
                .iter()
                .find(|f| **f != key && go_fold(f) == folded)
            {
                return Err(de::Error::custom(format!(
                    "key {key:?} in {} is read by runc as {field:?} and by gpushare as another \
                     key; write it as {field:?}",
                    self.0
                )));
            }
            if let Some(first) = seen.get(&folded) {
                let how = match *first == key {
                    true => String::new(),
                    false => format!(" (as {first:?} and {key:?}, one key to runc)"),
                };
                return Err(de::Error::custom(format!(
                    "key {key:?} is given twice in {}{how}: runc would merge the two, gpushare \
                     would read only the last; give it once",
                    self.0
                )));
            }
            let value = map.next_value_seed(At(&Path::Key(self.0, &key)))?;
            seen.insert(folded, key.clone());
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(raw: &str) -> String {
        from_slice(raw.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for raw in [
            r#"{"a":1,"b":[1,-2,3.5,1e300,"x",null,true,{"c":{}}],"d":"\u00e9\ud83d\ude00"}"#,
            r#"{"n":-3777777777777777777777777777777777555.770,"big":18446744073709551615}"#,
            r#"{"annotations":{"Foo":"x","gpu.profile":"1g.10gb"}}"#,
            "{}",
        ] {
            let want: Value = serde_json::from_slice(raw.as_bytes()).unwrap();
            assert_eq!(from_slice(raw.as_bytes()).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn duplicate_keys_at_any_level_are_named() {
        let e = err(r#"{"annotations":{"gpu.profile":"1g.10gb","gpu.profile":"7g.80gb"}}"#);
        assert!(
            e.contains(r#"key "gpu.profile" is given twice in "annotations""#),
            "{e}"
        );
        let e = err(r#"{"linux":{"resources":{}},"linux":{"devices":[]}}"#);
        assert!(
            e.contains(r#""linux" is given twice in the top level"#),
            "{e}"
        );
        let e = err(r#"{"linux":{"devices":[{"path":"/a"},{"major":1,"major":241}]}}"#);
        assert!(e.contains(r#"given twice in "linux"."devices"[1]"#), "{e}");
        assert!(e.contains("line 1 column"), "serde_json says where: {e}");
        // One key to Go's decoder, two to serde_json.
        let e = err(r#"{"x":{"Foo":1,"foo":2}}"#);
        assert!(
            e.contains(r#"(as "Foo" and "foo", one key to runc)"#),
            "{e}"
        );
    }

    #[test]
    fn another_spelling_of_a_field_runc_reads_is_refused() {
        for (raw, field) in [
            (r#"{"Linux":{}}"#, "linux"),
            (
                r#"{"linux":{"resources":{"devices":[{"Allow":true}]}}}"#,
                "allow",
            ),
            (r#"{"linux":{"devices":[{"MAJOR":241}]}}"#, "major"),
            (r#"{"linux":{"deviceſ":[]}}"#, "devices"),
            (
                r#"{"annotations":{"gpu.profile":"1g.10gb"},"annotatıons":{}}"#,
                "annotations",
            ),
        ] {
            let e = err(raw);
            assert!(
                e.contains(&format!("is read by runc as {field:?}")),
                "{raw}: {e}"
            );
        }
        assert!(from_slice(br#"{"linux":{"devices":[{"major":241}]}}"#).is_ok());
    }

    #[test]
    fn what_is_not_json_is_refused() {
        assert!(from_slice(b"{\"a\":\"\xff\"}").is_err());
        assert!(from_slice(br#"{"a":1} x"#).is_err());
        assert!(from_slice(br#"{"a":"\ud800"}"#).is_err());
    }
}
