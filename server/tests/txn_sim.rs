//! The transaction coordinator under the seeded simulator (`wharf_server::txn::sim`):
//! producers and zombies, partitions with KIP-890 verification, coordinator crashes and
//! leadership moves with appends landing or not, failing and late markers; the invariants
//! of exactly-once delivery are checked after every event, and settling at the end.
//!
//! CI runs a fixed budget of seeds. More, or one with every event printed:
//!
//! ```text
//! scripts/simulate.sh --target txn --seeds 20000 --from 1000
//! scripts/simulate.sh --target txn --seed 1234 --verbose
//! WHARF_TXN_SIM_SEEDS=20000 WHARF_TXN_SIM_SEED_START=1000 cargo test --release -p wharf-server --test txn_sim -- --nocapture
//! WHARF_TXN_SIM_SEED=1234 WHARF_TXN_SIM_TRACE=1 cargo test -p wharf-server --test txn_sim -- --nocapture
//! ```
//!
//! `WHARF_TXN_SIM_THREADS` sets how many seeds run at once (default: every core).

use std::time::Instant;

use wharf_server::txn::sim::{
    self, SimOptions, SimStats, Violation, SEEDS_ENV, SEED_ENV, SEED_START_ENV, TRACE_ENV,
};

/// Seeds CI runs: about ten seconds of a debug build on two cores. Planted bugs (a
/// fenced epoch allowed to commit, no verification, a marker failure taken for success,
/// no resumption after a load, no epoch bump when fencing, no coordinator epoch check at
/// the partitions, ...) were each caught within these seeds.
const CI_SEEDS: u64 = 400;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn run_seeds(start: u64, count: u64, trace: bool) -> Result<(Vec<SimStats>, f64), Violation> {
    let threads = env_u64("WHARF_TXN_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64)
        .min(count.max(1) as usize);
    let began = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(start);
    let results: Vec<Result<Vec<SimStats>, Violation>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed >= start + count {
                            return Ok(done);
                        }
                        let mut opts = SimOptions::for_seed(seed);
                        opts.trace = trace;
                        done.push(sim::run(&opts)?);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, began.elapsed().as_secs_f64()))
}

fn summary(stats: &[SimStats], seconds: f64) -> String {
    let sum = |f: fn(&SimStats) -> u64| stats.iter().map(f).sum::<u64>();
    format!(
        "{} seeds in {seconds:.1} s: {} events, {} simulated s, {} crashes, {} leadership moves, {} loads, {} appends ({} failed, {} landed anyway), {} InitProducerId ({} rotations), {} commits, {} aborts answered, {} fenced answers, {} markers written ({} refused), {} batches ({} refused), {} verifications, {} expirations",
        stats.len(),
        sum(|s| s.events),
        sum(|s| s.sim_ms as u64) / 1000,
        sum(|s| s.crashes),
        sum(|s| s.bounces),
        sum(|s| s.loads),
        sum(|s| s.appends),
        sum(|s| s.appends_failed),
        sum(|s| s.appends_landed_anyway),
        sum(|s| s.inits),
        sum(|s| s.rotations),
        sum(|s| s.commits),
        sum(|s| s.aborts),
        sum(|s| s.fenced_answers),
        sum(|s| s.markers_written),
        sum(|s| s.markers_refused),
        sum(|s| s.batches),
        sum(|s| s.batches_refused),
        sum(|s| s.verifications),
        sum(|s| s.expirations),
    )
}

#[test]
fn seeded_runs_keep_exactly_once() {
    let trace = std::env::var(TRACE_ENV).is_ok();
    let (start, count) = match env_u64(SEED_ENV) {
        Some(seed) => (seed, 1),
        None => (
            env_u64(SEED_START_ENV).unwrap_or(0),
            env_u64(SEEDS_ENV).unwrap_or(CI_SEEDS),
        ),
    };
    match run_seeds(start, count, trace) {
        Ok((stats, seconds)) => {
            println!("{}", summary(&stats, seconds));
            let sum = |f: fn(&SimStats) -> u64| stats.iter().map(f).sum::<u64>();
            if count >= 20 {
                // The faults the runs are for did happen.
                assert!(sum(|s| s.crashes) > 0, "no crash in {count} seeds");
                assert!(sum(|s| s.commits) > 0 && sum(|s| s.aborts) > 0);
                assert!(sum(|s| s.fenced_answers) > 0, "no producer was fenced");
                assert!(sum(|s| s.appends_landed_anyway) > 0);
                assert!(sum(|s| s.markers_refused) + sum(|s| s.batches_refused) > 0);
            }
        }
        Err(violation) => panic!("{violation}"),
    }
}

#[test]
fn the_same_seed_plays_the_same_run() {
    let a = sim::run(&SimOptions::for_seed(7)).unwrap_or_else(|v| panic!("{v}"));
    let b = sim::run(&SimOptions::for_seed(7)).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.events, b.events);
}
