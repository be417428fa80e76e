//! Integration tests: one binary, against the crate's loopback fake IQM server.

mod accounts;
mod composition;
mod concurrency;
mod edges;
mod fake;
mod faults;
mod fleet;
mod hardening;
mod interleavings;
mod login;
mod rate_limit;
mod renewal;
mod secrets;
mod stats;
mod status;
mod store;
mod support;
mod unauthorized;
