//! probe
fn main() {
    use nmr::bench::*;
    let iters = 20_000_000;
    let ts: Vec<_> = CallPath::ALL
        .iter()
        .map(|&p| std::sync::Arc::new(CallTarget::new(p)))
        .collect();
    for _ in 0..3 {
        for (p, t) in CallPath::ALL.iter().zip(&ts) {
            let v: Vec<String> = (0..5)
                .map(|_| format!("{:.2}", call_ns_on(t, 1, iters)))
                .collect();
            println!("{:40} {}", p.name(), v.join(" "));
        }
    }
}
