//! Demo workload.
