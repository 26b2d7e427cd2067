//! Where a container's create claim lives: `<state_dir>/claims/<id>`, a file a `create` holds
//! an exclusive `flock` on from before its grant until the runtime's own `create` process
//! exits (the descriptor is inherited across exec()). A `delete` that finds the claim held, and
//! the runtime with no state for the id yet, waits: releasing then would free a slice the
//! container is still about to come up with.

/// The folder of claim files inside the state directory.
pub const DIR: &[u8] = b"claims";

/// Whether `id` can name a claim file: one path component, not hidden, of a length every file
/// system takes. runc and crun refuse any other id anyway.
pub fn is_nameable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 255 && id[0] != b'.' && !id.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_one_visible_component() {
        assert!(is_nameable(b"c1"));
        assert!(is_nameable(&[b'a'; 255]));
        for bad in [&b""[..], b".", b"..", b".x", b"a/b", b"a\0b", &[b'a'; 256]] {
            assert!(!is_nameable(bad), "{bad:?}");
        }
    }
}
