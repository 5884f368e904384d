//! age benchmark.

fn main() {}
