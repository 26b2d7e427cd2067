//! The OCI state on the poststop hook's stdin: any bytes give an id that is safe to use as a
//! key, or an error; never a panic. And the entry binary's reading of the same state
//! (fastpath/src/state.rs), which releases a lease by itself: whenever it answers, the full hook
//! reads that very id (it may hand over more often, never release another container's lease).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let core = gpushare_core::hook::container_id(data);
    if let Ok(id) = &core {
        assert!(!id.is_empty() && id.len() <= 1024 && !id.chars().any(char::is_control));
    }
    if let Some(front) = gpushare_fastpath::state::container_id(data) {
        match &core {
            Ok(id) => assert_eq!(id.as_bytes(), front, "the full hook reads another id"),
            Err(e) => panic!(
                "the entry binary reads id {:?}, the full hook refuses the state: {e}",
                String::from_utf8_lossy(front)
            ),
        }
    }
});
