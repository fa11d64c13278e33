//! Verifying block workloads: an NBD client and a write/read workload that catches torn,
//! stale and misplaced blocks.
