//! End-to-end proxy benchmark (being written).
fn main() {}
