//! containerd 1.7 from Debian trixie (tests/it/common/trixie.rs) with gpushare as installed
//! (/usr/bin/gpushare, the node's config at /etc/gpushare/config.toml): `ctr run
//! --runc-binary`, and the shipped v2 drop-in as containerd 1.7's own loader reads it.
use crate::common;

use common::ctr::*;
use common::engines::*;
use common::trixie::Trixie;
use common::*;

/// trixie's containerd.
fn start(node: &SimNode) -> Containerd {
    node.configure("runtime = \"/usr/sbin/runc\"");
    Containerd::start(node, Host::Trixie(Trixie::enter(node)))
}

#[test]
fn containerd17_ctr_annotation_request_sees_its_slice_and_frees_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    assert_annotation_sees_its_slice_and_frees_it(&node, &ctd);
}

#[test]
fn containerd17_ctr_bad_request_shows_gpushare_message() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    assert_bad_request_shows_gpushare_message(
        &ctd,
        "failed to create shim task: OCI runtime create failed",
    );
    assert_nothing_made(&node);
}

#[test]
fn containerd17_ctr_no_request_is_exactly_plain_runc() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    assert_no_request_is_exactly_plain_runc(&node, &ctd);
}

/// packaging/containerd/gpushare-v2.toml verbatim, imported by a glob as packaging/install.sh
/// sets it up, read by containerd 1.7's own loader (`containerd config dump`): the gpushare
/// runtime, and CDI on where DRA drivers write their specs (the import replaces config.toml's
/// CRI section, so the drop-in carries it; tests/it/dra_cri.rs runs pods on it).
#[test]
fn containerd17_loads_the_shipped_v2_drop_in() {
    let node = SimNode::new("h100-80gb", 1, true);
    let tx = Trixie::enter(&node);
    let shipped =
        std::fs::read_to_string(repo_root().join("packaging/containerd/gpushare-v2.toml")).unwrap();
    let config = config_importing(tx.dir(), &shipped);
    let config = config.display().to_string();
    let out = tx.run("containerd", &["--config", &config, "config", "dump"]);
    assert_dump_has_gpushare_runtime(&out, "/usr/bin/gpushare");
    let dump = text(&out.stdout);
    for want in [
        "enable_cdi = true",
        "cdi_spec_dirs = [\"/etc/cdi\", \"/var/run/cdi\"]",
    ] {
        assert!(dump.contains(want), "{want} missing in:\n{dump}");
    }
}
