//! A tenant controls config.json's annotations and env: finding and validating a request must
//! never panic, whatever the bytes, and the cheap pre-scan must never miss a request.
#![no_main]
use gpushare_core::request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let maybe = request::may_contain_request(data);
    if let Ok(spec) = serde_json::from_slice::<serde_json::Value>(data) {
        for allow_env in [true, false] {
            if let Ok(Some(_)) = request::from_spec(&spec, allow_env) {
                assert!(maybe, "the pre-scan skipped a spec that holds a request");
            }
        }
    }
});
