//! The ledger's lock: `ledger.lock`, an empty file (0600) locked with `flock(LOCK_EX)`. Held by
//! whoever changes the state: the full program for every load-change-save of the ledger (and
//! the instance-log and history appends and the offers it writes with it), the entry binary
//! while it decides a warm grant from the offers and appends its journal line, the entry hook
//! while it appends a release. A reader that does not change anything (status, the `delete`
//! and `exec` checks) takes no lock: every file it reads is replaced by rename or only
//! appended to, and it reads the journal before the ledger (a save that folds the journal in
//! between then shows in the ledger it reads second).
//!
//! Order: a container's create claim ([`crate::claim`]) before the ledger's lock, never the
//! other way, and no other lock while this one is held. The full program makes the file; the
//! entry binary only opens one that exists (none: nothing was ever granted here).

/// The lock file's name inside the state directory.
pub const NAME: &str = "ledger.lock";
