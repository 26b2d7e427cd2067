//! What the `gpushare` entry binary reads alone: the top of the config and argv. Whatever the
//! bytes, no panic; and where it reads `runtime`/`state_dir` from a config the full parser
//! also accepts, both read the same values.
#![no_main]
use gpushare_core::config::Config;
use gpushare_fastpath::{args, config};
use libfuzzer_sys::fuzz_target;
use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    if let Some(top) = config::scan(data) {
        if let Ok(cfg) = std::str::from_utf8(data)
            .map_err(drop)
            .and_then(|t| Config::parse(t).map_err(drop))
        {
            let runtime = cfg
                .runtime
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec());
            assert_eq!(top.runtime.map(<[u8]>::to_vec), runtime, "runtime");
            if let Some(dir) = top.state_dir {
                assert_eq!(dir, cfg.state_dir.as_os_str().as_bytes(), "state_dir");
            }
        }
    }
    let words: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let parsed = args::parse(words.iter().copied());
    let mut roles = args::Roles::default();
    let own = words.iter().filter(|w| roles.next(w).is_own()).count();
    assert!(parsed.config.is_none() && parsed.after_delete.is_none() || own > 0);
});
