use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use wharf_loadgen::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(had_errors) => {
            // Errors from the broker were counted and shown; say so in the exit status too.
            if had_errors {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("wharf-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let report = wharf_loadgen::run::run(args)?;
    print!("{}", report.summary());
    if args.distribution {
        print!("\n{}", report.distribution_text());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, report.distribution_text())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        wharf_loadgen::plot::write_plot(&report, path)?;
    }
    Ok(report.had_errors())
}
