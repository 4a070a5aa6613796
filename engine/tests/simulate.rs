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
fn compacted_seeds_clean_remove_tombstones_and_survive_crashes() {
    // A third of the seeds run a compacted topic; these must really clean.
    let (mut cleanings, mut groups, mut tombstones, mut crashes) = (0, 0, 0, 0);
    for seed in 0..300 {
        let stats = workload::run(seed, false).map_err(|v| v.message);
        let stats = stats.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if stats.cleanings > 0 {
            cleanings += stats.cleanings;
            groups += stats.groups_cleaned;
            tombstones += stats.tombstones_removed;
            crashes += stats.crashes;
        }
    }
    println!("{cleanings} rounds, {groups} groups swapped in, {tombstones} tombstones removed, {crashes} crashes");
    assert!(cleanings > 200 && groups > 200 && tombstones > 10 && crashes > 50);
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

#[test]
fn seeds_that_once_found_a_defect_hold() {
    // Each found a real defect in a long sweep; they stay in the suite so it cannot return.
    let found = [
        // A stale leader-epoch checkpoint held against the cleaner's filler below the log start.
        (9_006_392, "filler below the log start"),
        (9_012_934, "filler below the log start"),
        (9_013_641, "filler below the log start"),
        // A reload that cut the active segment and then failed lost its damage report.
        (20_022_137, "failed reload's damage report"),
        // Damage found on a full disk: the moved log start was not written, and the clean
        // restart (which skips the scan) served the damaged batch.
        (20_089_744, "unrecorded log start after damage"),
        // The same, then space freed and a crash: the log start must be written once writes
        // succeed again, as the crash's scan does not reach the damage.
        (30_143_699, "unrecorded log start, then a crash"),
    ];
    for (seed, defect) in found {
        if let Err(v) = workload::run(seed, false) {
            panic!("seed {seed} ({defect}): {}", v.message);
        }
    }
}
