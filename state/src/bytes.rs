//! Substring search over bytes, for the byte scans of the formats (and of specs, in
//! `gpushare-fastpath`), with no allocator.

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
