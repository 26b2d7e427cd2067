//! Lease markers: `<state_dir>/leases/<container id>`, an empty file (0600) for every container
//! id that may hold a lease, so that the entry binary learns "this id holds nothing" from one
//! `stat` instead of reading the whole ledger (hundreds of KiB on a node of many GPUs) at every
//! `delete`, `exec`, warm grant and poststop hook.
//!
//! The invariant: whenever a lease of id X may be visible (in the ledger, or in the ledger with
//! its journal applied), `leases/X` exists. Markers are made and removed only under the ledger's
//! lock ([`crate::lock`]), and in this order:
//!
//! - made BEFORE the lease becomes visible: by the full program before it saves a ledger that
//!   holds a new lease, by the entry binary before it appends a grant line to the journal;
//! - removed only AFTER the lease is gone: by the full program after the save that drops it,
//!   by the entry hook after its release line is durable;
//! - a marker whose id holds nothing (a crash between the two steps above, or a grant that was
//!   never journaled) is stale: it costs only what a "maybe" costs (the look a GPU container's
//!   `delete` gets), and `gc` and `repair` remove it under the lock.
//!
//! A missing marker is trusted only when the ledger's header says its writer keeps markers
//! ([`crate::ledger::Header::marked`]): a ledger an older gpushare wrote (or a hand edit)
//! holds leases no marker names, and then the ledger is read as before. An id that cannot
//! name a file ([`is_nameable`]) never has a marker: its lookups read the ledger too.

pub use crate::claim::is_nameable;

/// The folder of lease markers inside the state directory.
pub const DIR: &str = "leases";
