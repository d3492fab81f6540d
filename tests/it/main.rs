//! Integration tests: one binary, real nats-server processes, real `tillit` binaries.

mod attacks;
mod availability;
mod backup;
mod breakglass;
mod callers;
mod context;
mod dashboard;
mod contract;
mod enroll;
mod estate_code;
mod faults;
mod foundation;
mod grants;
mod harness;
mod import;
mod interop;
mod metrics;
mod readme;
mod refusals;
mod replicas;
mod roles;
mod revocation;
mod schemas;
mod secrets;
mod sites;
mod store;
