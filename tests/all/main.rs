//! Integration tests: one binary, against the crate's loopback fake IQM server.

mod concurrency;
mod faults;
mod login;
mod renewal;
mod secrets;
mod support;
mod unauthorized;
