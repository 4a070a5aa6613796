//! The test suite's budget of simulator seeds for the engine target (see the crate docs):
//! `WHARF_SIM_SEEDS` seeds (2,000 by default) from `WHARF_SIM_FROM` (0), on every core.
//! A failing seed prints the command that replays it; `scripts/simulate.sh` runs millions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wharf_sim::{replay_command, run_seed, Target};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn engine_seeds_hold_every_invariant() {
    let seeds = env("WHARF_SIM_SEEDS", 2_000);
    let from = env("WHARF_SIM_FROM", 0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failures) = (next.clone(), failures.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= seeds {
                    return;
                }
                let seed = from + i;
                if let Err(v) = run_seed(Target::Engine, seed, false) {
                    let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                    f.push(format!(
                        "seed {seed}: {}\n  last steps:\n    {}\n  replay: {}",
                        v.message,
                        v.trace.join("\n    "),
                        replay_command(Target::Engine, seed)
                    ));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a simulation thread panicked");
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "{seeds} seeds, {} violations in {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17] {
        let a =
            run_seed(Target::Engine, seed, false).map(|s| (s.steps, s.appends_acked, s.crashes));
        let b =
            run_seed(Target::Engine, seed, false).map(|s| (s.steps, s.appends_acked, s.crashes));
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "seed {seed}");
    }
}
