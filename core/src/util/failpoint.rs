//! Failpoints: named places in allocate, spec write and release where a test can make the
//! process die (SIGKILL, as an OOM kill or a node shutdown would) to prove that the next call or
//! `gpusharectl gc` repairs whatever the crash left. The machinery exists only in builds with the
//! `failpoints` feature (the test builds); elsewhere `failpoint!` expands to nothing.
//!
//! `GPUSHARE_FAILPOINT=name:kill` kills the process when it reaches `name`;
//! `name:sleep=MS` pauses there (to widen a race on purpose). Several may be given, comma
//! separated. `GPUSHARE_FAILPOINT_LOG=FILE` appends every failpoint reached, one name a line,
//! so a test can list the points a path goes through.

/// Mark a step; see the module docs. Expands to a call whose body is chosen by this crate's
/// feature, so a failpoint in a binary (which has no such feature) is armed exactly when core's
/// are.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint::hit($name)
    };
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::io::Write;
    if let Some(log) = std::env::var_os("GPUSHARE_FAILPOINT_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{name}");
        }
    }
    let Ok(spec) = std::env::var("GPUSHARE_FAILPOINT") else {
        return;
    };
    for item in spec.split(',') {
        let Some((point, action)) = item.split_once(':') else {
            continue;
        };
        if point != name {
            continue;
        }
        if action == "kill" {
            // SAFETY: raising a signal at ourselves has no preconditions.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        } else if let Some(ms) = action.strip_prefix("sleep=").and_then(|m| m.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
