//! The configuration the README shows is one gpushare accepts, with the defaults it states;
//! the compose file docs/engines.md shows is the one packaging/ ships (and the tests run).

use gpushare_core::config::Config;

#[test]
fn readme_config_example_parses_and_matches_the_defaults() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let shown =
        Config::parse(block).unwrap_or_else(|e| panic!("README config does not parse: {e}"));
    let default = Config::default();
    assert_eq!(shown.state_dir, default.state_dir);
    assert_eq!(shown.nvml_library, default.nvml_library);
    assert_eq!(shown.pool.lock_timeout_ms, default.pool.lock_timeout_ms);
    assert_eq!(
        shown.pool.hook_lock_timeout_ms,
        default.pool.hook_lock_timeout_ms
    );
    assert_eq!(shown.pool.gc_grace_s, default.pool.gc_grace_s);
    assert_eq!(shown.policy.allow_env, default.policy.allow_env);
    assert_eq!(shown.policy.max_mps_percent, default.policy.max_mps_percent);
    assert_eq!(shown.mps.policy, default.mps.policy);
    assert_eq!(shown.mps.mount_path, default.mps.mount_path);
    assert_eq!(shown.inject.mode, default.inject.mode);
    assert_eq!(shown.inject.lib_dirs, default.inject.lib_dirs);
    assert_eq!(shown.log.level, default.log.level);
    assert_eq!(shown.mig.manage_mode, default.mig.manage_mode);
    assert_eq!(
        shown.placement.reuse_tolerance,
        default.placement.reuse_tolerance
    );
}

#[test]
fn engines_doc_shows_the_shipped_compose_file() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/engines.md")).unwrap();
    let shipped = std::fs::read_to_string(format!("{root}/packaging/compose.yaml")).unwrap();
    let shown = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("runtime: gpushare"))
        .expect("a compose file in docs/engines.md");
    assert_eq!(
        shown, shipped,
        "docs/engines.md must show packaging/compose.yaml as shipped"
    );
}
