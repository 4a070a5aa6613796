//! `wharf`: the broker, and administrative subcommands.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

use wharf_server::config::{self, BrokerArgs};
use wharf_server::{admin, broker};

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A Kafka-compatible streaming log broker, shard-per-core on io_uring",
    long_about = "Runs the broker when no subcommand is given: `wharf` alone serves Kafka clients on \
                  127.0.0.1:9092 with its data in ./data. Settings come from built-in defaults, \
                  then the TOML file given with --config (Kafka's broker config names), then flags.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// List a running broker's topics with their partitions' offsets.
    Topics(admin::topics::TopicsArgs),
    /// Consumer groups of a running broker: `group list`, `group describe <group>`
    /// (members, assignments, committed offsets and lag, like kafka-consumer-groups).
    Group(admin::groups::GroupArgs),
    /// The cluster: `cluster status` (nodes, roles, fenced or not, the active controller,
    /// the metadata quorum's term and committed offset, each node's lag).
    Cluster(admin::cluster::ClusterArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_broker(&cli.broker),
        Some(Command::Topics(args)) => admin::topics::run(&args).map_err(|e| e.to_string()),
        Some(Command::Group(args)) => admin::groups::run(&args).map_err(|e| e.to_string()),
        Some(Command::Cluster(args)) => admin::cluster::run(&args).map_err(|e| e.to_string()),
    };
    if let Err(message) = result {
        eprintln!("wharf: {}", message.replace('\n', " "));
        std::process::exit(1);
    }
}

fn run_broker(args: &BrokerArgs) -> Result<(), String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let config = config::resolve(args, cores).map_err(|e| e.to_string())?;
    init_logging();
    install_panic_exit();
    tune_allocator();
    broker::run(config).map_err(|e| e.to_string())
}

/// Keeps the buffers of disk reads and Fetch responses (up to a few MiB each, freed once
/// the response is written) in the allocator's heap. With glibc's defaults each is mapped
/// fresh, faulted in and zeroed page by page, then unmapped (or the heap is trimmed under
/// it): a consumer reading from disk spent more CPU on that than on its records. Up to
/// `TRIM_THRESHOLD` of freed memory per shard stays with the process. `GLIBC_TUNABLES`,
/// when set, decides instead.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        const MMAP_THRESHOLD: libc::c_int = 8 << 20;
        const TRIM_THRESHOLD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A panic on any shard is a bug that leaves that shard's partitions and connections
/// dead: report it and exit, so a supervisor restarts the broker on what is on disk.
fn install_panic_exit() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(70);
    }));
}
