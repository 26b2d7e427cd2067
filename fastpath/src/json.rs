//! A JSON reader for the entry binary, with no allocator: it checks a document against JSON's
//! grammar as strictly as a parser does (so a document it reads is one the full program reads
//! too) and then answers look-ups by walking the bytes again. Strings are used as written:
//! callers refuse an escaped key or value wherever they compare or copy one.
//!
//! The check also refuses what the full program refuses before it reads a spec: a key given
//! twice in one object, which runc's decoder reads differently (it merges the two), and a
//! key that runc would take as one of the fields gpushare reads but serde_json would not
//! (another case). Keys are compared as bytes, so a key with an escape or a non-ASCII
//! character (which might decode or fold to any other) is refused too.

/// The document is not one the plain case reads; the full program decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

pub(crate) type R<T> = Result<T, Refused>;

const MAX_DEPTH: u32 = 100;
/// The most keys held at once by the objects open at one point of a check (an object's own
/// and its enclosing objects'); real specs stay far below, and a larger one is the full
/// program's.
const MAX_OPEN_KEYS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Scalar,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// Where the value's text starts and ends (a string's quotes included).
    pub(crate) start: usize,
    pub(crate) end: usize,
}

pub(crate) struct Json<'a> {
    s: &'a [u8],
}

impl<'a> Json<'a> {
    pub(crate) fn ws(&self, mut i: usize) -> usize {
        while matches!(self.s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The value starting at `i`, checked to the end (JSON's grammar, strictly).
    pub(crate) fn value(&self, i: usize, depth: u32) -> R<Node> {
        self.checked_value(i, depth, &mut Unchecked)
    }

    /// [`Self::value`], each object's keys also shown to `keys`.
    fn checked_value<K: Keys>(&self, i: usize, depth: u32, keys: &mut K) -> R<Node> {
        if depth > MAX_DEPTH {
            return Err(Refused);
        }
        let node = |kind, end| {
            Ok(Node {
                kind,
                start: i,
                end,
            })
        };
        match *self.s.get(i).ok_or(Refused)? {
            b'"' => node(Kind::String, self.string_end(i)?),
            b'{' | b'[' => {
                let object = self.s[i] == b'{';
                let close = if object { b'}' } else { b']' };
                let mut j = self.ws(i + 1);
                if self.s.get(j) == Some(&close) {
                    return node(if object { Kind::Object } else { Kind::Array }, j + 1);
                }
                let mark = keys.open();
                loop {
                    if object {
                        if self.s.get(j) != Some(&b'"') {
                            return Err(Refused);
                        }
                        let key_end = self.string_end(j)?;
                        keys.key(self.s, mark, j + 1, key_end - 1)?;
                        j = self.ws(key_end);
                        if self.s.get(j) != Some(&b':') {
                            return Err(Refused);
                        }
                        j = self.ws(j + 1);
                    }
                    j = self.ws(self.checked_value(j, depth + 1, keys)?.end);
                    match self.s.get(j) {
                        Some(b',') => j = self.ws(j + 1),
                        Some(&c) if c == close => {
                            keys.close(mark);
                            return node(if object { Kind::Object } else { Kind::Array }, j + 1);
                        }
                        _ => return Err(Refused),
                    }
                }
            }
            b't' => node(Kind::Scalar, self.word(i, b"true")?),
            b'f' => node(Kind::Scalar, self.word(i, b"false")?),
            b'n' => node(Kind::Scalar, self.word(i, b"null")?),
            _ => node(Kind::Scalar, self.number_end(i)?),
        }
    }

    pub(crate) fn word(&self, i: usize, w: &[u8]) -> R<usize> {
        match self.s[i..].starts_with(w) {
            true => Ok(i + w.len()),
            false => Err(Refused),
        }
    }

    /// The end of the string at `i`, its escapes checked as a JSON parser checks them (a
    /// surrogate must come in a pair), and no raw control character in it.
    pub(crate) fn string_end(&self, i: usize) -> R<usize> {
        let s = self.s;
        let hex4 = |j: usize| -> R<u32> {
            let h = s.get(j..j + 4).ok_or(Refused)?;
            h.iter().try_fold(0u32, |n, &b| {
                Ok(n * 16 + (b as char).to_digit(16).ok_or(Refused)?)
            })
        };
        let mut j = i + 1;
        loop {
            match *s.get(j).ok_or(Refused)? {
                b'"' => return Ok(j + 1),
                b if b < 0x20 => return Err(Refused),
                b'\\' => match *s.get(j + 1).ok_or(Refused)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' => {
                        let u = hex4(j + 2)?;
                        j += 6;
                        if (0xdc00..0xe000).contains(&u) {
                            return Err(Refused);
                        }
                        if (0xd800..0xdc00).contains(&u) {
                            if s.get(j..j + 2) != Some(b"\\u") {
                                return Err(Refused);
                            }
                            if !(0xdc00..0xe000).contains(&hex4(j + 2)?) {
                                return Err(Refused);
                            }
                            j += 6;
                        }
                    }
                    _ => return Err(Refused),
                },
                _ => j += 1,
            }
        }
    }

    /// The end of the number at `i`. One whose size is near f64's limit or past it is refused:
    /// a JSON parser rejects it as out of range, and the full wrapper would not edit the spec.
    pub(crate) fn number_end(&self, i: usize) -> R<usize> {
        let s = self.s;
        let digits = |mut j: usize| {
            let start = j;
            while s.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            (j > start).then_some((j, j - start)).ok_or(Refused)
        };
        let mut j = i;
        if s.get(j) == Some(&b'-') {
            j += 1;
        }
        let (mut j, int_digits) = match s.get(j) {
            Some(b'0') => (j + 1, 1),
            Some(b'1'..=b'9') => digits(j)?,
            _ => return Err(Refused),
        };
        if s.get(j) == Some(&b'.') {
            j = digits(j + 1)?.0;
        }
        let mut exponent: i64 = 0;
        if matches!(s.get(j), Some(b'e' | b'E')) {
            j += 1;
            let negative = s.get(j) == Some(&b'-');
            if matches!(s.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let (end, _) = digits(j)?;
            let e = s[j..end].iter().fold(0i64, |n, &d| {
                n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
            });
            exponent = if negative { -e } else { e };
            j = end;
        }
        if (int_digits as i64 - 1).saturating_add(exponent) >= 300 {
            return Err(Refused);
        }
        Ok(j)
    }

    /// The members of a checked object, in order.
    pub(crate) fn members(&self, obj: Node) -> impl Iterator<Item = (&'a [u8], Node)> + '_ {
        let mut j = self.ws(obj.start + 1);
        core::iter::from_fn(move || {
            if j >= obj.end - 1 {
                return None;
            }
            let key_end = self.string_end(j).ok()?;
            // (A key is its bytes here: callers refuse objects whose keys hold escapes.)
            let key = &self.s[j + 1..key_end - 1];
            let v = self.value(self.ws(self.ws(key_end) + 1), 0).ok()?;
            j = self.ws(v.end);
            if self.s[j] == b',' {
                j = self.ws(j + 1);
            }
            Some((key, v))
        })
    }

    /// The elements of a checked array, in order.
    pub(crate) fn elements(&self, arr: Node) -> impl Iterator<Item = Node> + '_ {
        let mut j = self.ws(arr.start + 1);
        core::iter::from_fn(move || {
            if j >= arr.end - 1 {
                return None;
            }
            let v = self.value(j, 0).ok()?;
            j = self.ws(v.end);
            if self.s[j] == b',' {
                j = self.ws(j + 1);
            }
            Some(v)
        })
    }

    /// A key of an object; a key given twice is refused (which one counts is the parser's), and
    /// so is an object with an escaped key (which might spell `key`).
    pub(crate) fn get(&self, obj: Node, key: &[u8]) -> R<Option<Node>> {
        let mut found = None;
        for (k, v) in self.members(obj) {
            if k.contains(&b'\\') {
                return Err(Refused);
            }
            if k == key {
                if found.is_some() {
                    return Err(Refused);
                }
                found = Some(v);
            }
        }
        Ok(found)
    }

    /// A key that must hold `kind` when present.
    pub(crate) fn get_kind(&self, obj: Node, key: &[u8], kind: Kind) -> R<Option<Node>> {
        match self.get(obj, key)? {
            Some(n) if n.kind != kind => Err(Refused),
            other => Ok(other),
        }
    }

    /// A value's bytes: a string's between its quotes, refused if it holds an escape (the
    /// plain case compares and copies strings as they are written).
    pub(crate) fn text(&self, n: Node) -> R<&'a [u8]> {
        match n.kind {
            Kind::String => {
                let t = &self.s[n.start + 1..n.end - 1];
                match t.contains(&b'\\') {
                    true => Err(Refused),
                    false => Ok(t),
                }
            }
            _ => Ok(&self.s[n.start..n.end]),
        }
    }

    pub(crate) fn is_empty(&self, n: Node) -> bool {
        self.ws(n.start + 1) == n.end - 1
    }

    /// Whether an element is an object whose `key` is the string `value`; refused when that
    /// cannot be told from the bytes.
    pub(crate) fn names(&self, n: Node, key: &[u8], value: &[u8]) -> R<bool> {
        if n.kind != Kind::Object {
            return Ok(false);
        }
        match self.get(n, key)? {
            Some(v) if v.kind == Kind::String => Ok(self.text(v)? == value),
            _ => Ok(false),
        }
    }

    /// Whether any element of an array [`Self::names`] `value`.
    pub(crate) fn any_names(&self, list: Node, key: &[u8], value: &[u8]) -> R<bool> {
        for e in self.elements(list) {
            if self.names(e, key, value)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What a check does with each object's keys.
trait Keys {
    /// An object opens; the mark is what [`Keys::key`] and [`Keys::close`] are given for it.
    fn open(&mut self) -> usize;
    /// The object's next key, `doc[start..end]` (between its quotes).
    fn key(&mut self, doc: &[u8], mark: usize, start: usize, end: usize) -> R<()>;
    fn close(&mut self, mark: usize);
}

/// Walks of a document already checked look at no key.
struct Unchecked;

impl Keys for Unchecked {
    fn open(&mut self) -> usize {
        0
    }
    fn key(&mut self, _: &[u8], _: usize, _: usize, _: usize) -> R<()> {
        Ok(())
    }
    fn close(&mut self, _: usize) {}
}

/// The keys of the objects open at one point of the check, on the stack.
struct Open {
    keys: [(u32, u32); MAX_OPEN_KEYS],
    n: usize,
}

impl Keys for Open {
    fn open(&mut self) -> usize {
        self.n
    }

    fn key(&mut self, doc: &[u8], mark: usize, start: usize, end: usize) -> R<()> {
        let key = &doc[start..end];
        // Go's decoder folds case (ASCII and beyond) when it matches a field, so two keys of
        // one object that differ only in case are the same field to runc.
        let (mut odd, mut upper) = (false, false);
        for &b in key {
            odd |= b == b'\\' || b >= 0x80;
            upper |= b.is_ascii_uppercase();
        }
        if odd || crate::scan::case_variant_of(key, upper).is_some() {
            return Err(Refused);
        }
        let same = |&(a, b): &(u32, u32)| {
            (b - a) as usize == key.len() && doc[a as usize..b as usize].eq_ignore_ascii_case(key)
        };
        if self.keys[mark..self.n].iter().any(same) {
            return Err(Refused);
        }
        let span = (
            u32::try_from(start).map_err(|_| Refused)?,
            u32::try_from(end).map_err(|_| Refused)?,
        );
        *self.keys.get_mut(self.n).ok_or(Refused)? = span;
        self.n += 1;
        Ok(())
    }

    fn close(&mut self, mark: usize) {
        self.n = mark;
    }
}

/// A whole document that is one JSON object (whitespace around it allowed), checked, its keys
/// included (see the module's comment).
pub(crate) fn object(doc: &[u8]) -> R<(Json<'_>, Node)> {
    if core::str::from_utf8(doc).is_err() {
        return Err(Refused);
    }
    let json = Json { s: doc };
    let mut open = Open {
        keys: [(0, 0); MAX_OPEN_KEYS],
        n: 0,
    };
    let root = json.checked_value(json.ws(0), 0, &mut open)?;
    if root.kind != Kind::Object || json.ws(root.end) != doc.len() {
        return Err(Refused);
    }
    Ok((json, root))
}
