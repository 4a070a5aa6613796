//! `wharf-sim`: runs simulator seeds (see the library's documentation).
//!
//! ```text
//! wharf-sim [--target engine|all] [--seeds N] [--from S] [--threads T]
//! wharf-sim [--target engine] --seed S [--verbose]
//! ```
//! Ends with `N seeds, V violations` (and exit status 1 if V > 0); each failing seed
//! prints the command that replays it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wharf_sim::{replay_command, run_seed, Target};

struct Args {
    targets: Vec<Target>,
    seeds: u64,
    from: u64,
    threads: usize,
    verbose: bool,
}

fn usage(problem: &str) -> ! {
    eprintln!("wharf-sim: {problem}");
    eprintln!("usage: wharf-sim [--target engine|all] [--seeds N] [--from S] [--seed S] [--threads T] [--verbose]");
    std::process::exit(2);
}

fn parse() -> Args {
    let mut args = Args {
        targets: Target::ALL.to_vec(),
        seeds: 1000,
        from: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
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
                args.targets = Target::parse(&name)
                    .unwrap_or_else(|| usage(&format!("unknown target {name}")));
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
    args
}

fn main() {
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
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(Mutex::new(0u64));
    let total = args.seeds * args.targets.len() as u64;
    let threads: Vec<_> = (0..args.threads.min(total.max(1) as usize))
        .map(|_| {
            let (next, violations) = (next.clone(), violations.clone());
            let targets = args.targets.clone();
            let (seeds, from, verbose) = (args.seeds, args.from, args.verbose);
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let target = targets[(i / seeds) as usize];
                let seed = from + i % seeds;
                if let Err(v) = run_seed(target, seed, verbose) {
                    let mut count = violations.lock().unwrap_or_else(|e| e.into_inner());
                    *count += 1;
                    let mut report = format!(
                        "seed {seed} ({}): VIOLATION: {}\n",
                        target.name(),
                        v.message
                    );
                    if !verbose {
                        report.push_str("  last steps:\n");
                        for line in &v.trace {
                            report.push_str(&format!("    {line}\n"));
                        }
                    }
                    report.push_str(&format!("  replay: {}\n", replay_command(target, seed)));
                    print!("{report}");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let violations = *violations.lock().unwrap_or_else(|e| e.into_inner());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{total} seeds in {secs:.1} s ({:.0} seeds/s on {} threads)",
        total as f64 / secs.max(1e-9),
        args.threads
    );
    println!("{total} seeds, {violations} violations");
    std::process::exit(if violations > 0 { 1 } else { 0 });
}
