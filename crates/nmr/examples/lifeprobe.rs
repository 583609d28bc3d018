//! probe
fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let n: u64 = std::env::args()
        .nth(2)
        .map_or(100_000, |s| s.parse().unwrap());
    match which.as_str() {
        "n" => println!("per binding {:.0} ns", nmr::bench::per_binding_ns(1000, n)),
        "c" => println!(
            "core lifecycle {:.0} ns",
            nmr::bench::pair_lifecycle_core_ns(n)
        ),
        "d" => println!(
            "detach {:.2} us busy {:.2}",
            nmr::bench::detach_us(n as usize, 0),
            nmr::bench::detach_us(n as usize, 1)
        ),
        _ => println!("lifecycle {:.0} ns", nmr::bench::pair_lifecycle_ns(n)),
    }
}
