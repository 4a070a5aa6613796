//! Starting and stopping the broker: checks a person can act on (port, data directory,
//! metadata), then one shard per core ([`shards`]), then the "listening" line once all of
//! them serve.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

pub mod shards;

use crate::config::{io_reason, BrokerConfig};
use crate::node::calls::mesh_builder;
use crate::shard::ShardId;
use shards::{ControlStart, ShardStart};

/// The line printed on stdout once every shard serves (followed by the address).
pub const LISTENING_PREFIX: &str = "wharf listening on ";
/// The line printed on stdout after the listening line when metrics are served.
pub const METRICS_PREFIX: &str = "wharf metrics on ";
/// A lock file in the data directory keeps two brokers from sharing it.
const LOCK_FILE: &str = ".lock";

pub use crate::config::StartupError;

/// Runs the broker until SIGTERM or SIGINT; returns once it has shut down cleanly.
pub fn run(config: BrokerConfig) -> Result<(), StartupError> {
    let port_hold = reserve_port(config.listen)?;
    let mut config = config.with_bound_port(port_hold.port);
    let _lock = lock_data_dir(&config.data_dir)?;
    // Absolute from here on: glommio resolves relative paths of directories it opens
    // against no directory at all (EBADF), and logs are clearer with the full path.
    config.data_dir = std::fs::canonicalize(&config.data_dir).map_err(|e| {
        StartupError(format!(
            "cannot resolve data dir {}: {}",
            config.data_dir.display(),
            io_reason(&e)
        ))
    })?;
    // Bound before the node registers, so its registration carries the real port (port 0
    // picks one); shard 0 serves it.
    let mut replication_listener = match config.cluster.replication_listen {
        Some(addr) => {
            let listener = bind_listener(addr, "replication")?;
            let bound = listener.local_addr().map_err(|e| {
                StartupError(format!(
                    "cannot listen for replication on {addr}: {}",
                    io_reason(&e)
                ))
            })?;
            config.cluster.replication_listen = Some(bound);
            Some(listener)
        }
        None => None,
    };
    let prepared = crate::cluster::startup::prepare(&config)?;
    // Bound before any shard starts, so a busy port is a start-up error; shard 0 serves it.
    let mut controller_listener = match config.cluster.controller_listen {
        Some(addr) => {
            let listener = bind_listener(addr, "controllers")?;
            if addr.port() == 0 {
                // Only a one-node cluster may let the system pick the port (the others
                // reach a voter where the voters list says): its voter entry, which
                // DescribeQuorum and DescribeCluster show, is where it really listens.
                let bound = listener.local_addr().map_err(|e| {
                    StartupError(format!(
                        "cannot listen for controllers on {addr}: {}",
                        io_reason(&e)
                    ))
                })?;
                config.cluster.controller_listen = Some(bound);
                for voter in &mut config.cluster.voters {
                    if voter.id == config.node_id {
                        if let Some((_, port)) = &mut voter.address {
                            *port = bound.port();
                        }
                    }
                }
            }
            Some(crate::cluster::net::ControllerListener {
                listener,
                // KIP-919: Kafka clients that talk to the controllers are served there too.
                kafka_clients: Some(crate::net::controller_clients::serve),
            })
        }
        None => None,
    };
    let mut prepared = Some(prepared);
    // Bound here, before any shard starts, so a busy port is a startup error; shard 0
    // serves it.
    let mut metrics_listener = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| {
            StartupError(format!("cannot serve metrics on {addr}: {}", io_reason(&e)))
        })?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| StartupError(format!("cannot serve metrics: {}", io_reason(&e))))?,
        ),
        None => None,
    };

    // Every thread started from here on inherits this mask; shard 0 takes the signals
    // with sigwait, so they never interrupt a shard.
    block_termination_signals();

    let (ready_tx, ready_rx) = mpsc::channel();
    let mesh = mesh_builder(config.shards);
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut handles = Vec::with_capacity(config.shards);
    for i in 0..config.shards {
        let start = ShardStart {
            id: ShardId(i),
            cpu: (!cores.is_empty()).then(|| cores[i % cores.len()]),
            config: config.clone(),
            control: if i == 0 {
                prepared.take().map(|prepared| ControlStart {
                    prepared,
                    controller_listener: controller_listener.take(),
                })
            } else {
                None
            },
            mesh: mesh.clone(),
            ready: ready_tx.clone(),
            metrics_listener: if i == 0 {
                metrics_listener.take()
            } else {
                None
            },
            replication_listener: if i == 0 {
                replication_listener.take()
            } else {
                None
            },
        };
        handles.push(
            shards::spawn(start)
                .map_err(|e| StartupError(format!("cannot start shard {i}: {e}")))?,
        );
    }
    drop(ready_tx);
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return Err(StartupError(why)),
            Err(_) => return Err(StartupError("a shard stopped while starting".into())),
        }
    }
    drop(port_hold);

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{LISTENING_PREFIX}{}", config.listen);
    if let Some(addr) = metrics_addr {
        let _ = writeln!(stdout, "{METRICS_PREFIX}{addr}");
    }
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(
        shards = config.shards,
        data_dir = %config.data_dir.display(),
        advertised = %format!("{}:{}", config.advertised_host, config.advertised_port),
        "serving"
    );

    for handle in handles {
        if handle.join().is_err() {
            return Err(StartupError("a shard stopped abnormally".into()));
        }
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The port to serve on, held until every shard listens. A fixed port is checked with a
/// plain bind (SO_REUSEADDR, not SO_REUSEPORT), which fails if anyone listens on it (even
/// another broker using SO_REUSEPORT) but not because of the TIME_WAIT sockets a broker
/// that stopped left behind (the shards' listeners set SO_REUSEADDR for that, see
/// `net::listen`).
/// Port 0 is resolved by binding a SO_REUSEPORT socket that stays bound (not listening)
/// until the shards have joined it, so no one else can take the port meanwhile.
struct PortHold {
    port: u16,
    _socket: Option<socket2::Socket>,
}

fn reserve_port(listen: SocketAddr) -> Result<PortHold, StartupError> {
    let fail =
        |e: std::io::Error| StartupError(format!("cannot listen on {listen}: {}", io_reason(&e)));
    if listen.port() != 0 {
        drop(TcpListener::bind(listen).map_err(fail)?);
        return Ok(PortHold {
            port: listen.port(),
            _socket: None,
        });
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )
    .map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.bind(&listen.into()).map_err(fail)?;
    let port = socket
        .local_addr()
        .map_err(fail)?
        .as_socket()
        .map(|a| a.port())
        .unwrap_or(0);
    Ok(PortHold {
        port,
        _socket: Some(socket),
    })
}

/// Creates the data directory if needed, checks it is writable, and locks it.
fn lock_data_dir(dir: &Path) -> Result<File, StartupError> {
    let shown = dir.display();
    std::fs::create_dir_all(dir)
        .map_err(|e| StartupError(format!("cannot create data dir {shown}: {}", io_reason(&e))))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StartupError(format!(
                "data dir {shown} is not writable: {}",
                io_reason(&e)
            ))
        })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartupError(format!(
            "data dir {shown} is in use by another wharf process"
        )));
    }
    Ok(lock)
}

/// How long a fixed controller or replication port that is in use is tried again before
/// the broker gives up: the listening socket of a process that just exited can outlive it
/// for a moment (its io_uring instance is torn down after the exit, and an accept in flight
/// holds the socket until then), and a restart must not fail for that.
const PORT_IN_USE_RETRY: Duration = Duration::from_secs(3);

/// The controller or replication listener, bound (SO_REUSEADDR, so a restart is not kept
/// off the port by the TIME_WAIT sockets of the last run) and listening. A port in use is
/// tried again for [`PORT_IN_USE_RETRY`].
fn bind_listener(addr: SocketAddr, what: &str) -> Result<TcpListener, StartupError> {
    let fail = |e: std::io::Error| {
        StartupError(format!(
            "cannot listen for {what} on {addr}: {}",
            io_reason(&e)
        ))
    };
    let give_up_at = std::time::Instant::now() + PORT_IN_USE_RETRY;
    loop {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        match socket.bind(&addr.into()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && std::time::Instant::now() < give_up_at =>
            {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            other => other.map_err(fail)?,
        }
        socket.listen(128).map_err(fail)?;
        return Ok(socket.into());
    }
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

fn block_termination_signals() {
    let set = termination_signals();
    // SAFETY: changes only this thread's signal mask, with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Blocks until SIGTERM or SIGINT arrives; returns its name. Runs on a blocking thread.
pub fn wait_for_termination_signal() -> &'static str {
    let set = termination_signals();
    let mut signal: libc::c_int = 0;
    loop {
        // SAFETY: valid set and out-pointer; the signals are blocked in every thread.
        let rc = unsafe { libc::sigwait(&set, &mut signal) };
        if rc == 0 {
            return if signal == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_is_reported_with_the_address() {
        let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = blocker.local_addr().unwrap();
        let e = reserve_port(addr).err().expect("port is busy").to_string();
        assert!(e.contains(&addr.to_string()) && e.contains("in use"), "{e}");
    }

    #[test]
    fn port_zero_is_resolved_and_held() {
        let hold = reserve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(hold.port, 0);
        // A plain bind cannot take the held port.
        assert!(TcpListener::bind(("127.0.0.1", hold.port)).is_err());
    }

    #[test]
    fn the_data_dir_is_locked_against_a_second_broker() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).err().expect("locked").to_string();
        assert!(e.contains("in use"), "{e}");
        drop(first);
        assert!(lock_data_dir(dir.path()).is_ok());
    }

    #[test]
    fn a_data_dir_under_a_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let e = lock_data_dir(&file.join("data"))
            .err()
            .expect("cannot create")
            .to_string();
        assert!(e.contains("not-a-directory") && !e.contains('\n'), "{e}");
    }
}
