//! Patching whatever config.json an engine (or a tenant's image config) produced: never a
//! panic, unknown fields kept, and applying the same edit twice gives the same spec.
#![no_main]
use gpushare_core::spec::{self, DeviceNode, Edit, Hook};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let edit = Edit {
        devices: vec![DeviceNode {
            path: "/dev/nvidia-caps/nvidia-cap12".into(),
            major: 241,
            minor: 12,
            file_mode: 0o444,
        }],
        env: vec![("CUDA_VISIBLE_DEVICES".into(), "MIG-fuzz".into())],
        poststop: Some(Hook {
            path: "/usr/bin/gpushare-hook".into(),
            args: vec!["gpushare-hook".into(), "poststop".into()],
            env: vec!["PATH=/usr/bin".into()],
            timeout: Some(30),
        }),
        ..Default::default()
    };
    let keys: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if spec::apply(&mut v, &edit, Path::new("config.json")).is_ok() {
        for k in &keys {
            assert!(v.get(k).is_some(), "field {k} lost");
        }
        let once = v.clone();
        spec::apply(&mut v, &edit, Path::new("config.json")).expect("a patched spec patches again");
        assert_eq!(once, v, "not idempotent");
        let bytes = serde_json::to_vec(&v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }
});
