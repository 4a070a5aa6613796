//! Wharf's seeded simulator (in the manner of TigerBeetle's VOPR). Each *target* is a
//! state machine of the broker run under simulated devices — today the storage engine's
//! partition log on a simulated disk; later the Raft metadata log and partition replicas
//! under a simulated network — with a random workload drawn from a seed and invariants
//! checked after every step. A seed replays exactly, on any machine.
//!
//! `scripts/simulate.sh` runs many seeds on every core; the test suite runs a fixed budget.

pub mod engine;

/// A state machine the simulator can run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The storage engine's partition log on a simulated disk.
    Engine,
}

impl Target {
    pub const ALL: &'static [Target] = &[Target::Engine];

    pub fn name(self) -> &'static str {
        match self {
            Target::Engine => "engine",
        }
    }

    pub fn parse(name: &str) -> Option<Vec<Target>> {
        match name {
            "all" => Some(Target::ALL.to_vec()),
            _ => Target::ALL
                .iter()
                .find(|t| t.name() == name)
                .map(|t| vec![*t]),
        }
    }
}

/// What one seed did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct SeedStats {
    pub steps: u64,
    pub appends_acked: u64,
    pub crashes: u64,
    pub failures: u64,
    pub damage_reports: u64,
}

/// An invariant that did not hold: what, and the last steps that led there.
#[derive(Clone, Debug)]
pub struct Violation {
    pub message: String,
    pub trace: Vec<String>,
}

/// Runs one seed of `target`. With `verbose`, every step is printed as it runs.
pub fn run_seed(target: Target, seed: u64, verbose: bool) -> Result<SeedStats, Violation> {
    match target {
        Target::Engine => engine::run(seed, verbose),
    }
}

/// The command that replays one seed.
pub fn replay_command(target: Target, seed: u64) -> String {
    format!(
        "scripts/simulate.sh --target {} --seed {seed} --verbose",
        target.name()
    )
}
