//! Integration tests: one binary, real nats-server processes, real `tillit` binaries.

mod attacks;
mod availability;
mod backup;
mod breakglass;
mod contract;
mod enroll;
mod faults;
mod foundation;
mod grants;
mod harness;
mod interop;
mod metrics;
mod refusals;
mod replicas;
mod revocation;
mod secrets;
mod sites;
mod store;
