//! `wharf-sim`: Wharf's seeded simulator (in the manner of TigerBeetle's VOPR). Each
//! *target* is a state machine of the broker run under simulated devices, with a random
//! workload drawn from a seed and invariants checked after every step; a seed replays
//! exactly, on any machine. `scripts/simulate.sh` builds and runs it.
//!
//! ```text
//! wharf-sim [--target engine|replica|controller|txn|all] [--seeds N] [--from S] [--threads T]
//! wharf-sim [--target engine|replica|controller|txn] --seed S [--verbose]
//! ```
//! Runs N seeds (1,000 by default) from S (0) on every core and ends with the line
//! `N seeds, V violations` (exit status 1 if V > 0); each failing seed prints what broke,
//! its last steps, and the one command that replays it.
//!
//! Targets: `engine`, one partition log on a simulated disk (`wharf_engine::sim::workload`);
//! `replica`, three replicas of one to three partitions with a controller, producers, a
//! faulty network and crashes (`wharf_server::replica::sim`, docs/replication.md);
//! `controller`, the Raft metadata quorum and the controller with brokers, an admin client,
//! a faulty network, partitions and crash-restarts on simulated disks
//! (`wharf_server::controller::sim`, docs/cluster.md); `txn`, the transaction coordinator
//! with producers, zombies, partitions, crashes and failing markers
//! (`wharf_server::txn::sim`, docs/transactions.md). `all` runs each in turn.

use std::process::ExitCode;

use wharf_engine::sim::runner::{default_threads, run_seeds, Violation};
use wharf_engine::sim::workload;
use wharf_server::controller::sim as controller_sim;
use wharf_server::replica::sim as replica_sim;
use wharf_server::txn::sim as txn_sim;

/// A state machine the simulator runs: its name and one seed of it.
struct Target {
    name: &'static str,
    run: fn(u64, bool) -> Result<(), Violation>,
}

const TARGETS: &[Target] = &[
    Target {
        name: workload::TARGET,
        run: |seed, verbose| workload::run(seed, verbose).map(|_| ()),
    },
    Target {
        name: replica_sim::TARGET,
        run: run_replica,
    },
    Target {
        name: controller_sim::TARGET,
        run: run_controller,
    },
    Target {
        name: txn_sim::TARGET,
        run: run_txn,
    },
];

// The server's simulators keep no window of last steps: `--verbose` prints every event of
// a seed as it happens, and a violation says at which simulated moment it broke.

/// One seed of the replica simulator; with `verbose` it prints every event as it goes.
fn run_replica(seed: u64, verbose: bool) -> Result<(), Violation> {
    let mut opts = replica_sim::SimOptions::for_seed(seed);
    opts.trace = verbose;
    replica_sim::run(&opts)
        .map(|_| ())
        .map_err(|v| at(v.at_ms, v.message))
}

/// One seed of the metadata quorum and controller simulator.
fn run_controller(seed: u64, verbose: bool) -> Result<(), Violation> {
    let mut opts = controller_sim::SimOptions::for_seed(seed);
    opts.trace = verbose;
    controller_sim::run(&opts)
        .map(|_| ())
        .map_err(|v| at(v.at_ms, v.message))
}

/// One seed of the transaction coordinator simulator.
fn run_txn(seed: u64, verbose: bool) -> Result<(), Violation> {
    let mut opts = txn_sim::SimOptions::for_seed(seed);
    opts.trace = verbose;
    txn_sim::run(&opts)
        .map(|_| ())
        .map_err(|v| at(v.at_ms, v.message))
}

fn at(at_ms: i64, message: String) -> Violation {
    Violation {
        message: format!("at {at_ms} ms (simulated): {message}"),
        trace: Vec::new(),
    }
}

struct Args {
    targets: Vec<&'static Target>,
    seeds: u64,
    from: u64,
    threads: usize,
    verbose: bool,
}

fn usage(problem: &str) -> ! {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    eprintln!("wharf-sim: {problem}");
    eprintln!(
        "usage: wharf-sim [--target {}|all] [--seeds N] [--from S] [--seed S] [--threads T] [--verbose]",
        names.join("|")
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        targets: TARGETS.iter().collect(),
        seeds: 1000,
        from: 0,
        threads: default_threads(),
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--target" => {
                let name = it.next().unwrap_or_else(|| usage("--target needs a name"));
                args.targets = match name.as_str() {
                    "all" => TARGETS.iter().collect(),
                    _ => vec![TARGETS
                        .iter()
                        .find(|t| t.name == name)
                        .unwrap_or_else(|| usage(&format!("unknown target {name}")))],
                };
            }
            "--seeds" => args.seeds = number(it.next(), "--seeds"),
            "--from" => args.from = number(it.next(), "--from"),
            "--seed" => {
                args.from = number(it.next(), "--seed");
                args.seeds = 1;
            }
            "--threads" => args.threads = number(it.next(), "--threads").max(1) as usize,
            "--verbose" => args.verbose = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.seeds.checked_add(args.from).is_none() {
        usage("--from plus --seeds is past the last seed");
    }
    args
}

fn main() -> ExitCode {
    let args = parse();
    if args.verbose {
        // The engine's own log lines, interleaved with the steps.
        tracing_subscriber::fmt()
            .with_writer(std::io::stdout)
            .with_target(false)
            .with_ansi(false)
            .without_time()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "wharf_engine=info".into()),
            )
            .init();
    }
    let mut seeds = 0;
    let mut violations = 0;
    for target in &args.targets {
        let (run, verbose) = (target.run, args.verbose);
        let report = run_seeds(
            args.from..args.from + args.seeds,
            args.threads,
            |seed| run(seed, verbose),
            |failure| print!("{}", failure.describe(target.name, !verbose)),
        );
        eprintln!(
            "{}: {} seeds in {:.1} s ({:.0} seeds/s on {} threads)",
            target.name,
            report.seeds,
            report.elapsed.as_secs_f64(),
            report.seeds_per_second(),
            report.threads
        );
        seeds += report.seeds;
        violations += report.failures.len();
    }
    println!("{seeds} seeds, {violations} violations");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
