//! Throughput bench.
fn main() {}
