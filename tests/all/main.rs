//! Integration tests: one binary, against the crate's loopback fake IQM server.

mod composition;
mod concurrency;
mod faults;
mod login;
mod renewal;
mod secrets;
mod stats;
mod store;
mod support;
mod unauthorized;
