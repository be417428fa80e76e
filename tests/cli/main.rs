//! The `iqm-auth` binary run as a process, as scripts and operators run it, against the fake
//! IQM on loopback and a real `redis-server` (started per test on a free port, as in
//! `tests/fleet/`). Counts are the fake's: every login and refresh it received.

// The fleet tests' redis-server, shared: these tests use part of it.
#[allow(dead_code)]
#[path = "../fleet/redis_server.rs"]
mod redis_server;

mod errors;
mod exec;
mod requests;
mod session;
mod status;
mod support;
mod token;
