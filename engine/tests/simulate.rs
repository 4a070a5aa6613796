//! The test suite's budget of simulator seeds for the engine's log (see `wharf_engine::sim`):
//! `WHARF_SIM_SEEDS` seeds (2,000 by default) from `WHARF_SIM_FROM` (0), on every core.
//! A failing seed prints the command that replays it; `scripts/simulate.sh` runs millions.

use wharf_engine::sim::runner::{default_threads, run_seeds};
use wharf_engine::sim::workload;

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
    let report = run_seeds(
        from..from + seeds,
        default_threads(),
        |seed| workload::run(seed, false).map(|_| ()),
        |_| {},
    );
    println!(
        "{} in {:.1} s ({:.0} seeds/s on {} threads)",
        report.summary(),
        report.elapsed.as_secs_f64(),
        report.seeds_per_second(),
        report.threads
    );
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|f| f.describe(workload::TARGET, true))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 594] {
        let run = || {
            workload::run(seed, false)
                .map(|s| (s.steps, s.appends_acked, s.crashes, s.failures))
                .map_err(|v| v.message)
        };
        assert_eq!(run(), run(), "seed {seed}");
    }
}
