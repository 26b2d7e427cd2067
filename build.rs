//! `gpushare` (bin/gpushare/main.rs) is linked with no C runtime and no libc, statically and at a
//! fixed address, so that starting it costs the kernel's execve() and little else.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
            println!("cargo:rustc-link-arg-bin=gpushare={arg}");
        }
    }
}
