//! The `ferric` command.

fn main() {}
