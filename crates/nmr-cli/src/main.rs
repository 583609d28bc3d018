//! The `nmr` command (placeholder).
fn main() {}
