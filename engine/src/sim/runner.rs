//! Running seeds: many at once on every core, each reproducible from its number, and what
//! a seed that breaks an invariant reports — the message, the last steps that led there,
//! and the one command that replays it. Shared by every simulation target (the engine's
//! log here; the controller and the replicas in the server) and by the test suite's budget.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Steps of a seed kept for a violation report.
pub const TRACE_LINES: usize = 40;

/// An invariant that did not hold: what, and the last steps that led there.
#[derive(Clone, Debug)]
pub struct Violation {
    pub message: String,
    pub trace: Vec<String>,
}

/// What a seed did, one line per step, keeping the last [`TRACE_LINES`]; with `verbose`
/// every line is also printed as it happens (replaying one seed).
#[derive(Debug)]
pub struct Trace {
    lines: VecDeque<String>,
    verbose: bool,
}

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        Trace {
            lines: VecDeque::with_capacity(TRACE_LINES),
            verbose,
        }
    }

    pub fn note(&mut self, line: String) {
        if self.verbose {
            println!("{line}");
        }
        if self.lines.len() == TRACE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// A violation with the steps that led to it.
    pub fn violation(&self, message: String) -> Violation {
        Violation {
            message,
            trace: self.lines.iter().cloned().collect(),
        }
    }
}

/// A seed that broke an invariant.
#[derive(Clone, Debug)]
pub struct SeedFailure {
    pub seed: u64,
    pub violation: Violation,
}

impl SeedFailure {
    /// The report a person reads: the violation, the last steps (unless they were printed
    /// already), and the command that replays the seed of `target`.
    pub fn describe(&self, target: &str, with_trace: bool) -> String {
        let mut out = format!(
            "seed {} ({target}): VIOLATION: {}\n",
            self.seed, self.violation.message
        );
        if with_trace {
            out.push_str("  last steps:\n");
            for line in &self.violation.trace {
                out.push_str(&format!("    {line}\n"));
            }
        }
        out.push_str(&format!(
            "  replay: {}\n",
            replay_command(target, self.seed)
        ));
        out
    }
}

/// The one command that replays a seed of `target`, step by step.
pub fn replay_command(target: &str, seed: u64) -> String {
    format!("scripts/simulate.sh --target {target} --seed {seed} --verbose")
}

/// What a run of seeds found.
#[derive(Debug)]
pub struct RunReport {
    pub seeds: u64,
    /// In seed order.
    pub failures: Vec<SeedFailure>,
    pub elapsed: Duration,
    pub threads: usize,
}

impl RunReport {
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `N seeds, V violations`: the line a run ends with.
    pub fn summary(&self) -> String {
        format!("{} seeds, {} violations", self.seeds, self.failures.len())
    }
}

/// The threads a run uses by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every seed of `seeds` with `run` on `threads` threads (each seed on one thread,
/// seeds handed out in order), calling `on_failure` for each violation as it is found.
/// A seed that panics counts as a violation.
pub fn run_seeds<F, G>(seeds: Range<u64>, threads: usize, run: F, on_failure: G) -> RunReport
where
    F: Fn(u64) -> Result<(), Violation> + Sync,
    G: Fn(&SeedFailure) + Sync,
{
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let failures = Mutex::new(Vec::new());
    let count = seeds.end.saturating_sub(seeds.start);
    let threads = threads.clamp(1, count.clamp(1, 1 << 16) as usize);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        Err(Violation {
                            message: format!("panicked: {what}"),
                            trace: Vec::new(),
                        })
                    });
                if let Err(violation) = outcome {
                    let failure = SeedFailure { seed, violation };
                    on_failure(&failure);
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(failure);
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| f.seed);
    RunReport {
        seeds: count,
        failures,
        elapsed: started.elapsed(),
        threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_once_and_failures_come_back_in_order() {
        let ran = Mutex::new(Vec::new());
        let report = run_seeds(
            10..30,
            3,
            |seed| {
                ran.lock().expect("not poisoned").push(seed);
                if seed % 7 == 0 {
                    let mut trace = Trace::new(false);
                    trace.note(format!("step of {seed}"));
                    return Err(trace.violation("broken".into()));
                }
                Ok(())
            },
            |_| {},
        );
        let mut ran = ran.into_inner().expect("not poisoned");
        ran.sort_unstable();
        assert_eq!(ran, (10..30).collect::<Vec<_>>());
        let failed: Vec<u64> = report.failures.iter().map(|f| f.seed).collect();
        assert_eq!(failed, vec![14, 21, 28]);
        assert_eq!(report.summary(), "20 seeds, 3 violations");
        let text = report.failures[0].describe("engine", true);
        assert!(text.contains("step of 14"), "{text}");
        assert!(text.contains("scripts/simulate.sh --target engine --seed 14 --verbose"));
    }

    #[test]
    fn a_trace_keeps_the_last_lines() {
        let mut trace = Trace::new(false);
        for i in 0..TRACE_LINES + 5 {
            trace.note(format!("{i}"));
        }
        let v = trace.violation("x".into());
        assert_eq!(v.trace.len(), TRACE_LINES);
        assert_eq!(v.trace[0], "5");
    }
}
