//! The decisions `gpushare` makes before anything is loaded, shared by the entry binary (which
//! runs with no libc and no allocator, so that a container that asks for no GPU pays one
//! execve() of a few kilobytes) and by `gpushare-core` (so the full wrapper reads argv, specs
//! and the ledger exactly the same way). The state directory's files and formats are
//! `gpushare-state`'s.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod args;
pub mod config;
mod json;
pub mod lease;
pub mod runc_log;
pub mod scan;
pub mod splice;
pub mod state;
