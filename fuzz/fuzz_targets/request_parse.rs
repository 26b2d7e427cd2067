//! A tenant controls config.json's annotations and env: finding and validating a request must
//! never panic, whatever the bytes, and the cheap pre-scan must never miss a request. The
//! strict reader (duplicate and case-folded keys refused) reads what serde_json reads, or
//! refuses.
#![no_main]
use gpushare_core::request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let maybe = request::may_contain_request(data);
    let plain = serde_json::from_slice::<serde_json::Value>(data).ok();
    if let Ok(strict) = gpushare_core::strict_json::from_slice(data) {
        assert_eq!(
            Some(&strict),
            plain.as_ref(),
            "the strict reader read another value"
        );
    }
    if let Some(spec) = plain {
        for allow_env in [true, false] {
            // A request, or a malformed one the wrapper would refuse: either way the pre-scan
            // (which the entry binary acts on alone) must not let the spec through unread.
            if !matches!(request::from_spec(&spec, allow_env), Ok(None)) {
                assert!(maybe, "the pre-scan skipped a spec that holds a request");
            }
        }
    }
});
