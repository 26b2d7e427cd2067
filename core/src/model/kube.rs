//! Kubernetes: which containers of a pod may get a slice.
//!
//! containerd's CRI plugin copies the pod annotations it passes through (`pod_annotations`,
//! e.g. `gpu.*`) into every container of the pod, the sandbox ("pause") container included;
//! a CRI-O runtime handler may see pod annotations on its sandbox too. The sandbox only holds the pod's
//! namespaces: a slice given to it would be held, unused, for the pod's whole life, and the
//! pod's real container would then ask for a second one. So a sandbox never gets a slice,
//! whatever its annotations say, and a bad pod-level request is reported once, by the
//! container that would have used it, not by the sandbox.
//!
//! A pod annotation reaches every app container of the pod, and each container that asks gets
//! a slice of its own (leases are keyed by container id). `gpu.containers=a,b` narrows a
//! pod's request to the containers named there (their names in the pod spec, which the CRI
//! runtime writes into each container's spec); every other container of the pod runs
//! without a GPU and is not refused for the pod's request either.

use serde_json::Value;

/// The pod annotation that names which of the pod's containers a pod-level request is for.
pub const ANN_CONTAINERS: &str = "gpu.containers";
/// containerd (CRI plugin) writes the container's name in the pod spec here.
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// CRI-O copies kubelet's container-name label into the spec under this key.
pub const K8S_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// At most this many names in `gpu.containers` (a pod has far fewer containers).
const MAX_NAMES: usize = 64;
const NAMES_ACCEPTED: &str =
    "a comma-separated list of the pod's container names (as in the pod spec), e.g. trainer,eval";

/// containerd (CRI plugin) marks sandbox and ordinary containers with this annotation.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O's annotation for the same.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const SANDBOX: &str = "sandbox";

/// A `gpu.containers` list gpushare cannot honour; the value is shown quoted and cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("annotation {ANN_CONTAINERS}={list} names containers of a Kubernetes pod, but this container has no pod container name ({CRI_CONTAINER_NAME}); ask without {ANN_CONTAINERS} outside Kubernetes")]
    NoPodName { list: String },
    #[error("annotation {ANN_CONTAINERS}={list} is not valid: {why}; accepted: {NAMES_ACCEPTED}")]
    Invalid { list: String, why: String },
}

/// True for a Kubernetes pod sandbox (pause) container's spec.
pub fn is_sandbox(spec: &Value) -> bool {
    let Some(ann) = spec.get("annotations").and_then(Value::as_object) else {
        return false;
    };
    [CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE]
        .iter()
        .any(|k| ann.get(*k).and_then(Value::as_str) == Some(SANDBOX))
}

/// The container's name in its pod, as the CRI runtime recorded it in the spec.
pub fn container_name(spec: &Value) -> Option<&str> {
    let ann = spec.get("annotations").and_then(Value::as_object)?;
    [CRI_CONTAINER_NAME, K8S_CONTAINER_NAME]
        .iter()
        .find_map(|k| ann.get(*k).and_then(Value::as_str))
}

/// Whether the spec's request (if any) is meant for this container: true without
/// `gpu.containers`; with it, true only for a container the list names. A malformed list, or
/// a list on a container that has no pod container name, is an error naming the annotation.
pub fn selected(spec: &Value) -> Result<bool, KubeError> {
    let Some(list) = spec
        .get("annotations")
        .and_then(Value::as_object)
        .and_then(|a| a.get(ANN_CONTAINERS))
        .and_then(Value::as_str)
    else {
        return Ok(true);
    };
    let names = parse_names(list)?;
    let Some(me) = container_name(spec) else {
        return Err(KubeError::NoPodName { list: shown(list) });
    };
    Ok(names.contains(&me))
}

fn parse_names(list: &str) -> Result<Vec<&str>, KubeError> {
    let bad = |why: &str| KubeError::Invalid {
        list: shown(list),
        why: why.to_string(),
    };
    if list.len() > MAX_NAMES * 64 {
        return Err(bad("too long"));
    }
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.len() > MAX_NAMES {
        return Err(bad(&format!("more than {MAX_NAMES} names")));
    }
    for n in &names {
        if n.is_empty() {
            return Err(bad("an empty name"));
        }
        if !is_dns_label(n) {
            return Err(bad(&format!(
                "{} is not a container name (lower-case letters, digits and '-', at most 63)",
                shown(n)
            )));
        }
    }
    Ok(names)
}

/// A Kubernetes container name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Values shown in messages: quoted, control characters escaped, long values cut.
fn shown(value: &str) -> String {
    let s: String = value.chars().take(64).collect();
    if s.len() < value.len() {
        format!("{:?}... ({} bytes)", s, value.len())
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn without_a_list_every_container_is_selected() {
        for s in [
            json!({}),
            json!({"annotations": {CRI_CONTAINER_NAME: "app", "gpu.profile": "1g.10gb"}}),
        ] {
            assert_eq!(selected(&s), Ok(true), "{s}");
        }
    }

    #[test]
    fn a_list_selects_only_the_containers_it_names() {
        for (key, name, list, want) in [
            (CRI_CONTAINER_NAME, "trainer", "trainer", true),
            (CRI_CONTAINER_NAME, "trainer", "eval, trainer", true),
            (CRI_CONTAINER_NAME, "sidecar", "eval,trainer", false),
            (CRI_CONTAINER_NAME, "train", "trainer", false),
            (K8S_CONTAINER_NAME, "eval", "eval,trainer", true),
            (K8S_CONTAINER_NAME, "POD", "eval", false),
        ] {
            let s = json!({"annotations": {key: name, ANN_CONTAINERS: list}});
            assert_eq!(selected(&s), Ok(want), "{s}");
        }
    }

    #[test]
    fn a_bad_list_names_the_annotation() {
        for (list, why) in [
            ("", "an empty name"),
            ("a,,b", "an empty name"),
            ("Trainer", "is not a container name"),
            ("-a", "is not a container name"),
            ("a\nb", "is not a container name"),
        ] {
            let s = json!({"annotations": {CRI_CONTAINER_NAME: "a", ANN_CONTAINERS: list}});
            let err = selected(&s).unwrap_err().to_string();
            assert!(
                err.contains("annotation gpu.containers=") && err.contains(why),
                "{list:?}: {err}"
            );
            assert!(err.contains("accepted:"), "{err}");
        }
        let long = vec!["a"; MAX_NAMES + 1].join(",");
        let s = json!({"annotations": {CRI_CONTAINER_NAME: "a", ANN_CONTAINERS: long}});
        assert!(selected(&s).unwrap_err().to_string().contains("more than"));
    }

    #[test]
    fn a_list_outside_a_pod_is_refused() {
        let s = json!({"annotations": {ANN_CONTAINERS: "a", "gpu.profile": "1g.10gb"}});
        let err = selected(&s).unwrap_err().to_string();
        assert!(err.contains("has no pod container name"), "{err}");
    }

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
