//! Unsigned decimal numbers as gpushare's own files write them: digits only, no sign.

/// The number `digits` spells; None for anything but 1 to 20 ASCII digits that fit a u64.
pub fn parse(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `v` in decimal, written at the end of `buf`.
pub fn format(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = buf.len();
    loop {
        n -= 1;
        buf[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_a_u64() {
        let mut buf = [0u8; 20];
        for v in [0, 7, 10, 1795580185, u64::MAX] {
            assert_eq!(parse(format(v, &mut buf)), Some(v));
        }
        for bad in [&b""[..], b"-1", b"1a", b" 1", b"18446744073709551616"] {
            assert_eq!(parse(bad), None);
        }
    }
}
