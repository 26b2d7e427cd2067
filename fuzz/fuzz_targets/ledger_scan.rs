//! The entry binary's reading of the ledger and its journal (state/src/{ledger,journal}.rs),
//! which decides with no parser whether `delete`, `exec` and the poststop hook may skip the
//! full wrapper, against core's reading of the same files (`ledger::snapshot`: serde, then the
//! journal applied). Input: ledger, journal and a container id, separated by NUL bytes.
//! For every ledger core accepts, written back as core writes it: the entry binary reads its
//! header (generation and flags, which must say what core's ledger holds), and whenever core's
//! view of it (journal applied) holds anything of the id, both of the entry binary's answers
//! say it may: `journal::may_hold` (the body scan) and `fastpath::lease::may_hold` given the
//! id's lease marker,
//! which exists for every lease of the file and every journaled grant (a false "maybe" only
//! costs a locked look).
#![no_main]
use gpushare_core::ledger::{self, LedgerState};
use gpushare_state::{journal, ledger as ledger_file};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A state directory of this process's own (root-only, as core requires).
fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("gpushare-fuzz-ledger-{}", std::process::id()));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&d);
        d
    })
}

fn holds(st: &LedgerState, id: &str) -> bool {
    let of = |l: &ledger::Lease| l.container_id == id;
    st.instances
        .iter()
        .any(|r| r.lease.as_ref().is_some_and(of))
        || st.shares.iter().any(|s| of(&s.lease))
        || st
            .mps
            .iter()
            .any(|d| d.clients.iter().any(|c| of(&c.lease)))
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (raw, journal_bytes, id) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let Ok(mut st) = serde_json::from_slice::<LedgerState>(raw) else {
        return;
    };
    // What core writes: its header, then its fields in its order (history is not written).
    st.format = 1;
    let written = ledger::encode(&st, st.generation);
    assert_eq!(
        ledger_file::generation(&written),
        Some(st.generation),
        "the entry binary reads another generation"
    );
    let header = ledger_file::header(&written[..written.len().min(ledger_file::HEADER_MAX)])
        .expect("the entry binary reads the header core writes");
    let flags = ledger_file::Flags {
        mps_daemons: !st.mps.is_empty(),
        compute_mode_records: !st.compute_modes.is_empty(),
    };
    assert_eq!(
        (header.generation, header.flags),
        (st.generation, Some(flags)),
        "the header says another thing than the ledger holds"
    );
    let Ok(id) = std::str::from_utf8(id) else {
        return;
    };
    let d = dir();
    let ledger_file = d.join(ledger_file::NAME);
    let journal_file = d.join(journal::NAME);
    std::fs::write(&ledger_file, &written).unwrap();
    std::fs::write(&journal_file, journal_bytes).unwrap();
    let core = match ledger::snapshot(d) {
        Ok(core) => core,
        // A journal of another version: core refuses it, and the entry binary must not read
        // it either (it hands every such id to the full wrapper).
        Err(ledger::LedgerError::Journal { .. }) => {
            assert!(
                journal::is_foreign(journal_bytes)
                    && journal::may_hold(&written, journal_bytes, id.as_bytes()),
                "core refuses a journal the entry binary would read"
            );
            return;
        }
        Err(e) => panic!("core reads what it wrote: {e:?}"),
    };
    if holds(&core, id) {
        assert!(
            journal::may_hold(&written, journal_bytes, id.as_bytes()),
            "core's ledger holds {id:?}, the entry binary would skip it"
        );
        // The markers the invariant promises: the file's leases (core made them before its
        // save) and the journal's grants (the entry binary made them before its lines).
        let granted = journal::of_generation(journal_bytes, st.generation)
            .any(|e| matches!(e, journal::Entry::Grant { .. }) && e.id() == id.as_bytes());
        let marker = st.lease_ids().contains(id) || granted;
        let head = gpushare_fastpath::lease::Head::Read(Some(header));
        assert_ne!(
            gpushare_fastpath::lease::may_hold(id.as_bytes(), marker, head, journal_bytes),
            Some(false),
            "core's ledger holds {id:?}, the entry binary's marker probe would skip it"
        );
    }
});
