//! `gpushare`: an OCI runtime with runc's command line. It handles `create` (grant the slice
//! the container asks for and write it into the spec) and `delete` (release it); every other
//! command is exec'd to the real runtime untouched.

use gpushare_core::shim;

fn main() {
    std::process::exit(shim::run(std::env::args_os().collect()));
}
