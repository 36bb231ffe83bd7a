//! The real HTTP API, served on a loopback port, against both databases.

mod access;
mod admin;
mod allocations;
mod auth;
mod helpers;
mod idempotency;
mod money;
mod nodes;
mod portal;
mod ratelimit;
mod reconciliation;
mod sessions;
mod ssh_keys;
mod system;
