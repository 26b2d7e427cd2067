//! `gpushare-dra`: the kubelet plugin (docs/kubernetes.md).
fn main() {}
