//! The ledger's lock: `ledger.lock`, an empty file (0600) locked with `flock(LOCK_EX)`. Held by
//! whoever changes the state: the full program for every load-change-save of the ledger (with
//! the instance-log and history appends that go with it), the entry binary while it decides a
//! warm grant from the offers and appends its journal line, the entry hook while it appends a
//! release. The offers are written after the lock is let go: they name the generation they
//! were made for, so offers written late by a slower process are merely unused. A reader that
//! changes nothing (status, the `delete` and `exec` checks) takes no lock: every file it reads
//! is replaced by rename or only appended to, and it reads the journal before the ledger (a
//! save that folds the journal in between then shows in the ledger it reads second).
//!
//! Order: a container's create claim ([`crate::claim`]) is waited for only before the ledger's
//! lock is taken; while it is held, claims are only tried without waiting (`gc` sweeps claims
//! nobody holds), so the two never wait on each other. Only the full program creates
//! the file; the entry binary opens one that exists, and without one leaves a grant to the
//! full program (a release has nothing to do: nothing was ever granted here).

/// The lock file's name inside the state directory.
pub const NAME: &str = "ledger.lock";
