//! probe
fn main() {
    use nmr::bench::*;
    let iters = 10_000_000;
    let which: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    for &w in &which {
        let p = CallPath::ALL[w];
        let t = std::sync::Arc::new(CallTarget::new(p));
        for th in [1, 2, 1, 2] {
            let v: Vec<String> = (0..5)
                .map(|_| format!("{:.2}", call_ns_on(&t, th, iters)))
                .collect();
            println!("{:30} {th}t {}", p.name(), v.join(" "));
        }
    }
}
