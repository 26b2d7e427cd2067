//! `gpushare-hook precreate`: the oci-hooks(5) precreate stage. The spec comes on stdin and the
//! spec to use goes to stdout: granted exactly as the wrapper's `create` grants it
//! ([`gpushare_core::precreate`]), or, with no request (or a sandbox's), byte for byte as it
//! came in.

use crate::Error;
use gpushare_core::config::Config;
use gpushare_core::precreate;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The most of a spec read; real specs are a few KiB.
const MAX_SPEC: u64 = 16 << 20;

pub fn run(config: Option<&Path>, stdin: impl Read, mut stdout: impl Write) -> Result<(), Error> {
    let mut raw = Vec::new();
    stdin
        .take(MAX_SPEC + 1)
        .read_to_end(&mut raw)
        .map_err(Error::Stdin)?;
    if raw.len() as u64 > MAX_SPEC {
        return Err(Error::TooLarge(MAX_SPEC));
    }
    let pass = |out: &mut dyn Write| {
        out.write_all(&raw)
            .and_then(|()| out.flush())
            .map_err(Error::Stdout)
    };
    let Some(mut spec) = precreate::parse(&raw)? else {
        return pass(&mut stdout);
    };
    let cfg = Config::load(config)?;
    gpushare_core::logging::init(&cfg, "gpushare-hook");
    let Some(claim) = precreate::grant(&cfg, &mut spec)? else {
        return pass(&mut stdout);
    };
    let out = serde_json::to_vec(&spec).expect("a JSON value always serializes");
    if let Err(e) = stdout.write_all(&out).and_then(|()| stdout.flush()) {
        // The engine never got the edited spec: the container will not run with this slice.
        let timeout = Duration::from_millis(cfg.pool.lock_timeout_ms);
        if let Err(e) = gpushare_core::allocator::release(&cfg, &claim, timeout) {
            tracing::warn!(
                container = claim,
                "release failed: {e}; `gpusharectl gc` will retry"
            );
            eprintln!(
                "gpushare: releasing the slice of {claim} failed: {e}; `gpusharectl gc` will retry"
            );
        }
        return Err(Error::Stdout(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precreate_passes_a_spec_without_request_through_unchanged() {
        let spec = br#"{"ociVersion":"1.0.2",  "process":{"env":["PATH=/bin"]}}"#;
        let mut out = Vec::new();
        // No config is read on this path, so a missing one is no error.
        run(
            Some(Path::new("/nonexistent/gpushare.toml")),
            &spec[..],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, spec);
    }
}
