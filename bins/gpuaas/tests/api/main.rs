//! The real HTTP API, served on a loopback port, against both databases.

mod helpers;
mod idempotency;
mod system;
