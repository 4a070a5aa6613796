//! Shared harness for the integration tests: a real `wharf` process on an ephemeral port with
//! its own data directory, a raw Kafka-protocol connection for byte-level tests, and small
//! helpers around the `rdkafka` client.
//!
//! Every broker a test starts is killed when its `Broker` is dropped, so a failing test never
//! leaves a process behind; when the test is panicking, the broker's stderr is printed.
#![allow(dead_code)]

pub mod client;
pub mod http;
pub mod old;
pub mod raw;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The line the broker prints to stdout once every shard serves (the CLI contract).
pub const LISTENING_PREFIX: &str = "wharf listening on ";
/// The line that follows it when metrics are served on a port picked by the kernel.
pub const METRICS_PREFIX: &str = "wharf metrics on ";

/// Guard against a hung broker, not a performance assertion: a debug build on a busy
/// 2-core machine can take a while to start.
pub const STARTUP_GUARD: Duration = Duration::from_secs(90);
/// Guard for a clean shutdown after SIGTERM.
pub const SHUTDOWN_GUARD: Duration = Duration::from_secs(60);

pub fn wharf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wharf"))
}

/// A `wharf` process started by a test.
pub struct Broker {
    child: Option<Child>,
    /// Holds the data dir and the broker's stderr logs; removed on drop.
    root: tempfile::TempDir,
    extra_args: Vec<String>,
    shards: u32,
    /// What `--listen` asks for: port 0 unless a restart must keep the port.
    listen: String,
    addr: Option<SocketAddr>,
    incarnation: u32,
    /// The lines the broker printed after the listening line, as they come.
    later_stdout: Option<mpsc::Receiver<String>>,
    /// A data dir elsewhere than in `root` (a test's own file system).
    data_dir: Option<PathBuf>,
}

impl Broker {
    /// A broker with 2 shards, a fresh data dir and a port picked by the kernel.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Like `start`, with extra command-line flags (e.g. `--num-partitions 4`).
    pub fn start_with(extra_args: &[&str]) -> Broker {
        Broker::start_in(None, extra_args)
    }

    /// Like `start_with`, with `shards` shards (cluster tests run several processes on
    /// a small machine: one shard each keeps them lean).
    pub fn start_with_shards(shards: u32, extra_args: &[&str]) -> Broker {
        Broker::start_sharded(None, shards, extra_args)
    }

    /// Like `start_with`, with the data dir at `data_dir` when given (the broker's logs
    /// stay in a temp dir of their own).
    pub fn start_in(data_dir: Option<PathBuf>, extra_args: &[&str]) -> Broker {
        Broker::start_sharded(data_dir, 2, extra_args)
    }

    fn start_sharded(data_dir: Option<PathBuf>, shards: u32, extra_args: &[&str]) -> Broker {
        let root = tempfile::Builder::new()
            .prefix("wharf-it-")
            .tempdir()
            .expect("cannot create a temp dir for the broker");
        let mut broker = Broker {
            child: None,
            root,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            shards,
            listen: "127.0.0.1:0".to_string(),
            addr: None,
            incarnation: 0,
            later_stdout: None,
            data_dir,
        };
        broker.spawn();
        broker
    }

    /// Like `start_with`, with these settings in a configuration file (`--config`).
    pub fn start_with_settings(settings: &str, extra_args: &[&str]) -> Broker {
        let root = tempfile::Builder::new()
            .prefix("wharf-it-")
            .tempdir()
            .expect("cannot create a temp dir for the broker");
        let config = root.path().join("wharf.toml");
        std::fs::write(&config, settings).expect("cannot write the broker's config file");
        let mut args = vec![
            "--config".to_string(),
            config.to_str().expect("utf-8 temp path").to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut broker = Broker {
            child: None,
            root,
            extra_args: args,
            shards: 2,
            listen: "127.0.0.1:0".to_string(),
            addr: None,
            incarnation: 0,
            later_stdout: None,
            data_dir: None,
        };
        broker.spawn();
        broker
    }

    /// A broker with `shards` shards, these settings in a configuration file and these
    /// flags.
    pub fn start_custom(shards: u32, settings: &str, extra_args: &[&str]) -> Broker {
        let root = tempfile::Builder::new()
            .prefix("wharf-it-")
            .tempdir()
            .expect("cannot create a temp dir for the broker");
        let config = root.path().join("wharf.toml");
        std::fs::write(&config, settings).expect("cannot write the broker's config file");
        let mut args = vec![
            "--config".to_string(),
            config.to_str().expect("utf-8 temp path").to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut broker = Broker {
            child: None,
            root,
            extra_args: args,
            shards,
            listen: "127.0.0.1:0".to_string(),
            addr: None,
            incarnation: 0,
            later_stdout: None,
            data_dir: None,
        };
        broker.spawn();
        broker
    }

    /// The broker process's resident memory (VmRSS in /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("cannot read the broker's /proc status");
        let kib: usize = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.root.path().join("data"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("broker is not running")
    }

    /// `host:port` for a client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("broker is not running");
        i32::try_from(child.id()).expect("pid fits in i32")
    }

    fn stderr_path(&self, incarnation: u32) -> PathBuf {
        self.root.path().join(format!("stderr-{incarnation}.log"))
    }

    /// Everything the broker wrote to stderr, over all its runs in this test.
    pub fn stderr(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.incarnation {
            if let Ok(text) = std::fs::read_to_string(self.stderr_path(i)) {
                all.push_str(&text);
            }
        }
        all
    }

    /// What the broker wrote to stderr in its current (or last) run.
    pub fn stderr_of_this_run(&self) -> String {
        std::fs::read_to_string(self.stderr_path(self.incarnation)).unwrap_or_default()
    }

    /// Fails the test if the broker has panicked in any run (a panic kills a shard).
    pub fn assert_no_panic(&self) {
        let stderr = self.stderr();
        assert!(
            !stderr.contains("panicked"),
            "the broker panicked; its stderr:\n{stderr}"
        );
    }

    /// The metrics address from the `wharf metrics on ADDR` line (start the broker with
    /// `--metrics-listen 127.0.0.1:0`).
    pub fn metrics_addr(&self) -> SocketAddr {
        let lines = self.later_stdout.as_ref().expect("broker was started");
        let deadline = Instant::now() + STARTUP_GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no `{METRICS_PREFIX}ADDR` line: {e}"));
            if let Some(addr) = line.trim_end().strip_prefix(METRICS_PREFIX) {
                return addr.parse().expect("the metrics line names an address");
            }
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the broker again on the same data dir (it must be stopped) without waiting
    /// for it to serve: for a node expected never to.
    pub fn start_again_without_waiting(&mut self) {
        let stdout = self.spawn_process();
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut { stdout }, &mut std::io::sink()));
    }

    fn spawn(&mut self) {
        let stdout = self.spawn_process();
        let (later_tx, later_rx) = mpsc::channel();
        self.later_stdout = Some(later_rx);
        match wait_for_listening(stdout, later_tx) {
            Ok(addr) => self.addr = Some(addr),
            Err(why) => {
                let status = self.kill_now();
                panic!(
                    "broker did not come up: {why} (exit: {status:?}); stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    fn spawn_process(&mut self) -> std::process::ChildStdout {
        assert!(self.child.is_none(), "broker already running");
        self.incarnation += 1;
        let stderr = File::create(self.stderr_path(self.incarnation))
            .expect("cannot create the broker's stderr log");
        let mut cmd = Command::new(wharf_bin());
        cmd.arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--shards")
            .arg(self.shards.to_string())
            .args(&self.extra_args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", wharf_bin().display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        stdout
    }

    fn kill_now(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL: the process gets no chance to flush anything. Returns once a voter's
    /// controller port can be bound again, so a restart can listen there: the port was
    /// seen still bound for 5-12 ms after the killed process was reaped (its io_uring
    /// instance, which holds the listening socket, is torn down asynchronously).
    pub fn kill(&mut self) {
        self.kill_now().expect("broker is not running");
        self.addr = None;
        if let Some(addr) = self.controller_addr() {
            // Bounded: if someone else listens there, the restart says so.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpListener::bind(addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Where this node's controller listener listens, if it is a voter (its `--node-id`'s
    /// entry in `--controller-quorum-voters`).
    fn controller_addr(&self) -> Option<SocketAddr> {
        let flag = |name: &str| {
            let at = self.extra_args.iter().position(|a| a == name)?;
            self.extra_args.get(at + 1)
        };
        let id = flag("--node-id")?;
        flag("--controller-quorum-voters")?
            .split(',')
            .find_map(|voter| {
                let (voter_id, addr) = voter.split_once('@')?;
                (voter_id == id).then(|| addr.parse().ok()).flatten()
            })
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        // SAFETY: plain syscall on a pid this test spawned and has not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let mut child = self.child.take().expect("broker is running");
        let deadline = Instant::now() + SHUTDOWN_GUARD;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.addr = None;
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "broker did not exit within {SHUTDOWN_GUARD:?} of SIGTERM; stderr:\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    /// Starts the broker again on the same data dir and the same port it last listened on
    /// (the broker must already be stopped); fails the test if it does not come up.
    pub fn start_again_on_the_same_port(&mut self, port: u16) {
        assert!(self.child.is_none(), "stop the broker first");
        self.listen = format!("127.0.0.1:{port}");
        self.spawn();
    }

    /// Starts the broker again on the same data dir (and a new ephemeral port).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill_now();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = stderr.lines().collect();
                let from = lines.len().saturating_sub(80);
                lines[from..].join("\n")
            };
            eprintln!("---- wharf stderr (last 80 lines) ----\n{tail}\n---- end ----");
        }
    }
}

/// Reads the broker's stdout until the listening line, then keeps draining it on a thread
/// so the broker never blocks on a full pipe.
fn wait_for_listening(
    stdout: impl Read + Send + 'static,
    later: mpsc::Sender<String>,
) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel::<Result<SocketAddr, String>>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if sent {
                let _ = later.send(line.clone());
                continue;
            }
            if let Some(addr) = parse_listening_line(&line) {
                let _ = tx.send(Ok(addr));
                sent = true;
            } else {
                let _ = tx.send(Err(format!(
                    "first stdout line is not `{LISTENING_PREFIX}ADDR`: {line:?}"
                )));
                sent = true;
            }
        }
        if !sent {
            let _ = tx.send(Err("stdout closed before the listening line".to_string()));
        }
    });
    match rx.recv_timeout(STARTUP_GUARD) {
        Ok(result) => result,
        Err(_) => Err(format!("no listening line within {STARTUP_GUARD:?}")),
    }
}

/// Parses `wharf listening on 127.0.0.1:PORT`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix(LISTENING_PREFIX)?
        .parse()
        .ok()?;
    (addr.port() != 0).then_some(addr)
}

/// Runs `wharf` with the given arguments to completion (bounded), for CLI error tests.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_wharf_to_exit(args: &[&str], cwd: &Path) -> Finished {
    let mut child = Command::new(wharf_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start wharf");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + STARTUP_GUARD;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wharf {args:?} was expected to exit with an error but kept running");
            }
        }
    };
    Finished {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

/// `n` free loopback ports in `range`, below the ephemeral range, for nodes that must get
/// their port back when restarted (a voter's controller listener is in every other voter's
/// configuration). Bound together, so they differ, then released. Each test file that
/// restarts nodes has a range of its own, so clusters of files running at once never take
/// each other's ports while a node is down; within a file, each call starts past the ports
/// earlier calls handed out.
pub fn free_ports_in(range: std::ops::Range<u16>, n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let width = u32::from(range.end - range.start);
    let skip = HANDED_OUT.fetch_add(64, std::sync::atomic::Ordering::Relaxed);
    let mut next = range.start + ((std::process::id() + skip) % width) as u16;
    let mut listeners: Vec<std::net::TcpListener> = Vec::new();
    for _ in 0..width {
        if listeners.len() == n {
            break;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", next)) {
            listeners.push(l);
        }
        next = if next + 1 >= range.end {
            range.start
        } else {
            next + 1
        };
    }
    assert_eq!(
        listeners.len(),
        n,
        "no {n} free ports in {range:?} on loopback"
    );
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A topic name unique within this test process run.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
