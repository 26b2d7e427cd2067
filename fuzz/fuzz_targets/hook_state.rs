//! The OCI state on the poststop hook's stdin: any bytes give an id that is safe to use as a
//! key, or an error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = gpushare_core::hook::container_id(data) {
        assert!(!id.is_empty() && id.len() <= 1024 && !id.chars().any(char::is_control));
    }
});
