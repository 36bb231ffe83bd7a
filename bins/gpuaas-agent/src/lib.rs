//! The node agent: enrolls with the control plane, then keeps the node connected over
//! mTLS, pulling signed typed tasks, reporting inventory and heartbeats, renewing its
//! certificate. Host changes go through [`host::HostDriver`] only.
//!
//! It must never run an arbitrary command or shell string from the control plane, act
//! on a task before verifying its signature, node binding, time window and nonce, or
//! depend on the control plane's domain crates (only the protocol and the kernel).

pub mod host;

pub mod backoff;
pub mod cli;
pub mod enroll;
pub mod http;
pub mod runtime;
pub mod sim;
pub mod state;
