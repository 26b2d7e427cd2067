//! Kubernetes: which containers of a pod may get a slice.
//!
//! containerd's CRI plugin copies the pod annotations it passes through (`pod_annotations`,
//! e.g. `gpu.*`) into every container of the pod, the sandbox ("pause") container included;
//! a CRI-O runtime handler may see pod annotations on its sandbox too. The sandbox only holds the pod's
//! namespaces: a slice given to it would be held, unused, for the pod's whole life, and the
//! pod's real container would then ask for a second one. So a sandbox never gets a slice,
//! whatever its annotations say, and a bad pod-level request is reported once, by the
//! container that would have used it, not by the sandbox.

use serde_json::Value;

/// containerd (CRI plugin) marks sandbox and ordinary containers with this annotation.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O's annotation for the same.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const SANDBOX: &str = "sandbox";

/// True for a Kubernetes pod sandbox (pause) container's spec.
pub fn is_sandbox(spec: &Value) -> bool {
    let Some(ann) = spec.get("annotations").and_then(Value::as_object) else {
        return false;
    };
    [CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE]
        .iter()
        .any(|k| ann.get(*k).and_then(Value::as_str) == Some(SANDBOX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containerd_and_crio_sandboxes_are_recognised() {
        for key in [CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE] {
            let s = json!({"annotations": {key: "sandbox", "gpu.profile": "1g.10gb"}});
            assert!(is_sandbox(&s), "{key}");
        }
    }

    #[test]
    fn ordinary_containers_are_not_sandboxes() {
        for s in [
            json!({}),
            json!({"annotations": null}),
            json!({"annotations": {CRI_CONTAINER_TYPE: "container"}}),
            json!({"annotations": {CRIO_CONTAINER_TYPE: "container"}}),
            json!({"annotations": {"gpu.profile": "sandbox"}}),
            json!({"annotations": {CRI_CONTAINER_TYPE: "Sandbox"}}),
        ] {
            assert!(!is_sandbox(&s), "{s}");
        }
    }
}
