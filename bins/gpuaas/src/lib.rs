//! The control-plane binary's library: configuration, composition of the domain crates
//! into one router and one set of background roles, and the CLI.
//!
//! It wires; it does not decide. Business rules live in the domain crates and SQL in the
//! crates that own the tables; handlers here only parse, call and map.

pub mod alloc_bench;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod ledger;
pub mod openapi;
pub mod runtime;

use gpuaas_store::Migration;

/// Every migration the binary knows, across all crates it links.
pub fn migrations() -> Vec<Migration> {
    [
        gpuaas_policy::MIGRATIONS,
        gpuaas_events::MIGRATIONS,
        gpuaas_outbox::MIGRATIONS,
        gpuaas_http::MIGRATIONS,
        gpuaas_audit::MIGRATIONS,
        gpuaas_iam::MIGRATIONS,
        gpuaas_inventory::MIGRATIONS,
        gpuaas_billing::MIGRATIONS,
        gpuaas_payments::MIGRATIONS,
        gpuaas_allocations::MIGRATIONS,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}
