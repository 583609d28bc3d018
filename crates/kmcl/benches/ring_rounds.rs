//! Interleaved rounds of the ring throughput comparisons, for a machine shared with other
//! jobs: every round runs each contender once, back to back, so load changes hit all of them
//! alike; the report gives per-contender medians over the rounds and the median of the
//! per-round ratios. `cargo bench -p kmcl --bench ring_rounds [-- ROUNDS]` (default 9).
//!
//! * 64-byte messages, one thread to another: `kmcl::pipe` over a 64 KiB ring (`ring_auto`:
//!   the default, automatic batching, which coalesces small messages into ring packets of
//!   up to 4 KiB; `ring_per32` and `ring_each`: one VMBus packet per message, committed
//!   every 32 packets or after each), a bounded crossbeam channel and
//!   `std::sync::mpsc::sync_channel`, both with 1024 slots (the same 64 KiB of payload).
//! * 64 KiB packets: `kmcl::pipe` over a 1 MiB ring against single-thread memcpy of the
//!   same bytes, between two hot 64 KiB buffers and cycling over a 1 MiB + 1 MiB working set,
//!   and against the two-core ceiling: a plain SPSC queue of 16 (and 4) 64 KiB buffers with
//!   no VMBus format, one copy in and one copy out (`handoff_ceiling`). Also through a
//!   GPADL: a channel pair whose client fills one of 16 (or 4) 64 KiB slots of a GPADL and
//!   sends a GPA-direct packet naming it; the server copies the payload out through
//!   `external_data()` and completes, which frees the slot (`gpadl_slots`).

mod contenders;

use contenders::{
    LARGE, channel_in_band, crossbeam, gpadl_slots, handoff_ceiling, memcpy_hot, memcpy_set, mpsc,
    ring, ring_packets, ring_single_staged, ring_single_thread,
};
use std::time::Duration;

const SMALL_N: u64 = 400_000;
const LARGE_N: u64 = 4_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type Contender = (&'static str, Box<dyn Fn() -> Duration>);

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(9);
    if std::env::args().any(|a| a == "single") {
        // Profiling aid: only the single-thread ring loop.
        let d = ring_single_thread(rounds as u64 * SMALL_N);
        println!(
            "{:.2} Mpkt/s",
            rounds as f64 * SMALL_N as f64 / 1e6 / d.as_secs_f64()
        );
        return;
    }
    let small: Vec<Contender> = vec![
        ("crossbeam_bounded", Box::new(|| crossbeam(SMALL_N))),
        ("std_mpsc_sync", Box::new(|| mpsc(SMALL_N))),
        ("ring_auto", Box::new(|| ring(SMALL_N, 64, 16, 0))),
        ("ring_packets", Box::new(|| ring_packets(SMALL_N, 64, 16))),
        ("ring_per32", Box::new(|| ring(SMALL_N, 64, 16, 32))),
        ("ring_each", Box::new(|| ring(SMALL_N, 64, 16, 1))),
        (
            "ring_single_thread",
            Box::new(|| ring_single_thread(SMALL_N)),
        ),
        (
            "ring_single_staged",
            Box::new(|| ring_single_staged(SMALL_N)),
        ),
    ];
    let large: Vec<Contender> = vec![
        ("memcpy_hot_64KiB", Box::new(|| memcpy_hot(LARGE_N))),
        ("memcpy_1MiB_set", Box::new(|| memcpy_set(LARGE_N))),
        (
            "ceiling_16x64KiB",
            Box::new(|| handoff_ceiling(LARGE_N, 16)),
        ),
        ("ceiling_4x64KiB", Box::new(|| handoff_ceiling(LARGE_N, 4))),
        ("ring_1MiB", Box::new(|| ring(LARGE_N, LARGE, 256, 0))),
        ("ring_256KiB", Box::new(|| ring(LARGE_N, LARGE, 64, 0))),
        ("ring_512KiB", Box::new(|| ring(LARGE_N, LARGE, 128, 0))),
        ("ring_2MiB", Box::new(|| ring(LARGE_N, LARGE, 512, 0))),
        (
            "gpadl_16_slots",
            Box::new(|| gpadl_slots(LARGE_N, 16, true)),
        ),
        ("gpadl_4_slots", Box::new(|| gpadl_slots(LARGE_N, 4, true))),
        (
            "gpadl_16_no_copies",
            Box::new(|| gpadl_slots(LARGE_N, 16, false)),
        ),
        (
            "channel_in_band_16",
            Box::new(|| channel_in_band(LARGE_N, 16)),
        ),
    ];
    // `only NAME[,NAME...]` keeps the contenders whose name contains one of the NAMEs
    // (profiling aid; the first one kept is then the baseline of the ratios).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "only")
        .and_then(|i| args.get(i + 1).cloned());
    let keep = |set: Vec<Contender>| -> Vec<Contender> {
        match &only {
            Some(o) => set
                .into_iter()
                .filter(|(n, _)| o.split(',').any(|part| n.contains(part)))
                .collect(),
            None => set,
        }
    };
    let (small, large) = (keep(small), keep(large));
    // `small` or `large` as an argument runs only that half.
    let only_small = std::env::args().any(|a| a == "small");
    let only_large = std::env::args().any(|a| a == "large");
    // The first `bases` contenders of a set are the baselines every later one is compared to.
    for (title, set, unit, per, bases) in [
        (
            "64-byte packets, two threads",
            &small,
            "Mpkt/s",
            SMALL_N as f64 / 1e6,
            2,
        ),
        (
            "64 KiB packets",
            &large,
            "GiB/s",
            (LARGE_N as f64) * (LARGE as f64) / (1u64 << 30) as f64,
            3,
        ),
    ] {
        if (only_small && title.starts_with("64 KiB"))
            || (only_large && title.starts_with("64-byte"))
            || set.is_empty()
        {
            continue;
        }
        // Warm-up round, not counted.
        for (_, f) in set.iter() {
            f();
        }
        let mut rates = vec![Vec::new(); set.len()];
        for _ in 0..rounds {
            for (i, (_, f)) in set.iter().enumerate() {
                rates[i].push(per / f().as_secs_f64());
            }
        }
        println!("## {title}: {rounds} interleaved rounds, {unit}");
        for (i, (name, _)) in set.iter().enumerate() {
            let mut r = rates[i].clone();
            let all: Vec<String> = rates[i].iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "{name:>20}: median {:7.2}  [{}]",
                median(&mut r),
                all.join(" ")
            );
        }
        for base in 0..bases.min(set.len()) {
            for cand in base + 1..set.len() {
                let mut ratio: Vec<f64> = (0..rounds)
                    .map(|k| rates[cand][k] / rates[base][k])
                    .collect();
                println!(
                    "  {} / {}: median of per-round ratios {:.2}x",
                    set[cand].0,
                    set[base].0,
                    median(&mut ratio)
                );
            }
        }
    }
}
