//! Compiles proto/ (the kubelet's plugin registration and DRA services) with protoc, Debian's
//! protobuf-compiler. Clients are generated too: the tests' kubelet-like harness dials the
//! plugin with them.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/pluginregistration.proto",
            "proto/dra_v1.proto",
            "proto/dra_v1beta1.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
