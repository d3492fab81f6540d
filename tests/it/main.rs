//! Integration tests: one binary, real nats-server processes, real `tillit` binaries.

mod contract;
mod enroll;
mod foundation;
mod harness;
mod interop;
mod refusals;
