//! A run: discover the topic, start one glommio executor per core with its producers and
//! consumers, collect each core's per-second stats on the main thread, print the live line,
//! and build the report.
//!
//! Cores share nothing on the hot path. Each core's tasks record into that core's `Stats`
//! (an `Rc<RefCell<_>>`, never borrowed across an await); a ticker task sends the interval's
//! stats to the main thread once a second over a channel. The only cross-core state is a few
//! atomic counters touched once per response (for e2e and `--records` to know when to stop).
//!
//! With `--group` every consumer is a group member (`group.rs`): the members of a core join
//! before the core reports ready, and the core waits for the start without blocking its
//! executor, so that they keep heartbeating while other cores get ready.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};

use crate::admin::{discover, TopicLayout};
use crate::cli::{Acks, Args, CompressionArg, IsolationLevel, Mode, StartFrom};
use crate::conn::Conn;
use crate::consumer::Consumer;
use crate::group::{CoreGroup, GroupSettings, Member};
use crate::keys::KeySpec;
use crate::payload::RecordSize;
use crate::producer::Producer;
use crate::report::{IntervalLine, Report};
use crate::schedule::Clock;
use crate::stats::{GroupStats, Stats};

const NS_PER_SEC: u64 = 1_000_000_000;
/// Memory each executor registers for storage I/O; the load generator does no file I/O.
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;
/// Time between every core being connected and the load starting.
const START_DELAY: Duration = Duration::from_millis(20);
/// "No time limit" for `--records` runs.
const NO_STOP_NS: u64 = u64::MAX / 4;
/// How often a core with group members looks for the start signal (it must not block).
const START_POLL: Duration = Duration::from_millis(1);

/// Everything a producer or consumer needs to know about the workload; cloned per core.
#[derive(Clone, Debug)]
pub struct Workload {
    pub mode: Mode,
    pub topic: String,
    pub client_id: String,
    pub seed: u64,
    pub acks: Acks,
    /// `--idempotent`: producers get a producer id and stamp sequences (KIP-98).
    pub idempotent: bool,
    /// `--transactional`: producers write in transactions (idempotent is then set too).
    pub transactions: Option<TxnSettings>,
    /// Fetch isolation level (`--isolation-level`).
    pub isolation_level: IsolationLevel,
    pub compression: CompressionArg,
    pub keys: KeySpec,
    pub record_size: RecordSize,
    pub batch_size: usize,
    pub linger_ns: u64,
    pub in_flight: usize,
    pub request_timeout_ms: i32,
    pub rate: Option<f64>,
    pub total_producers: usize,
    pub from: StartFrom,
    pub fetch_max_wait_ms: i32,
    pub fetch_min_bytes: i32,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    /// `--group`: consumers are members of this group.
    pub group: Option<GroupSettings>,
    /// e2e: the id stamped in every value, so records of other runs are told apart.
    pub run_id: Option<u64>,
    /// consume mode with `--records`: stop once this many records are in.
    pub consume_target: Option<u64>,
    /// Run-clock times, set when every core is connected.
    pub start_ns: u64,
    pub warmup_end_ns: u64,
    pub stop_ns: u64,
    pub drain_ns: u64,
}

/// `--transactional` settings.
#[derive(Clone, Debug)]
pub struct TxnSettings {
    pub transactional_id_prefix: String,
    pub records_per_txn: u64,
    pub transaction_timeout_ms: i32,
    pub abort_ratio: f64,
}

/// The few counters cores share: touched once per response, never per record.
#[derive(Default, Debug)]
pub struct Shared {
    /// Records acknowledged to producers, all cores.
    pub produced: AtomicU64,
    /// Records consumed (e2e: records of this run), all cores.
    pub consumed: AtomicU64,
    /// Producers that have finished.
    pub producers_done: AtomicUsize,
    /// Set by the first consumer that reports e2e records missing at the drain timeout.
    pub missing_reported: std::sync::atomic::AtomicBool,
    /// --group: latest run-clock time any member consumed a record, ns.
    pub last_progress_ns: AtomicU64,
    /// --group: members in the middle of JoinGroup/SyncGroup.
    pub rebalancing: AtomicUsize,
    /// --group: the run is over for every member.
    pub group_done: std::sync::atomic::AtomicBool,
    /// --group e2e: when the members first saw every producer done (0: not yet), ns.
    pub producers_done_ns: AtomicU64,
}

enum CoreMsg {
    Ready,
    Failed(String),
    Tick {
        index: i64,
        stats: Box<Stats>,
    },
    Done {
        index: i64,
        stats: Box<Stats>,
        group: Box<GroupStats>,
    },
}

/// When the load starts, when measuring starts, when producing stops (run clock, ns).
#[derive(Copy, Clone, Debug)]
struct Timing {
    start_ns: u64,
    warmup_end_ns: u64,
    stop_ns: u64,
}

struct CorePlan {
    /// (global producer index, leader, partitions, record budget)
    producers: Vec<(usize, std::net::SocketAddr, Vec<i32>, Option<u64>)>,
    consumers: Vec<(std::net::SocketAddr, Vec<i32>)>,
    /// --group: global indices of this core's members.
    members: Vec<usize>,
    layout: TopicLayout,
    bootstrap: std::net::SocketAddr,
}

/// Deals producers and consumers to cores and partitions to them.
fn plan(
    args: &Args,
    layout: &TopicLayout,
    bootstrap: std::net::SocketAddr,
) -> anyhow::Result<Vec<CorePlan>> {
    let leaders = layout.by_leader();
    if leaders.is_empty() {
        bail!("topic {} has no partitions", layout.topic);
    }
    let mut plans: Vec<CorePlan> = (0..args.cores)
        .map(|_| CorePlan {
            producers: Vec::new(),
            consumers: Vec::new(),
            members: Vec::new(),
            layout: layout.clone(),
            bootstrap,
        })
        .collect();
    let total_producers = args.total_producers();
    for i in 0..total_producers {
        // Producer i talks to one leader and produces to the partitions it leads.
        let (leader, partitions) = &leaders[i % leaders.len()];
        let budget = args.records.map(|n| {
            n / total_producers as u64 + u64::from((i as u64) < n % total_producers as u64)
        });
        plans[i % args.cores]
            .producers
            .push((i, *leader, partitions.clone(), budget));
    }
    let total_consumers = args.total_consumers();
    if args.group.is_some() {
        // The group deals the partitions; members beyond the partition count join and
        // stay idle, as in Kafka.
        for c in 0..total_consumers {
            plans[c % args.cores].members.push(c);
        }
    } else if total_consumers > 0 {
        // Partitions are dealt round-robin; consumers beyond the partition count stay idle
        // (as in a consumer group) and are not started.
        let all: Vec<(i32, std::net::SocketAddr)> =
            layout.leaders.iter().map(|(p, a)| (*p, *a)).collect();
        for c in 0..total_consumers.min(all.len()) {
            let mine: Vec<(i32, std::net::SocketAddr)> = all
                .iter()
                .skip(c)
                .step_by(total_consumers)
                .copied()
                .collect();
            let mut by_leader: BTreeMap<std::net::SocketAddr, Vec<i32>> = BTreeMap::new();
            for (p, a) in mine {
                by_leader.entry(a).or_default().push(p);
            }
            for (leader, partitions) in by_leader {
                plans[c % args.cores].consumers.push((leader, partitions));
            }
        }
    }
    Ok(plans)
}

/// The 1-minute load average, from /proc/loadavg.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn machine_description(load_average_start: Option<f64>) -> crate::report::Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    crate::report::Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model,
        kernel,
        load_average_start,
        load_average_end: load_average(),
    }
}

/// Runs the workload described by `args` and returns the report.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    args.validate()?;
    let load_average_start = load_average();
    let bootstrap = args.bootstrap_addr()?;

    // Setup on a throwaway executor: topic metadata (and creation).
    let (topic, create, client_id, timeout) = (
        args.topic.clone(),
        args.create_topic
            .then_some((args.partitions, args.replication_factor)),
        args.client_id.clone(),
        args.request_timeout_ms,
    );
    let layout = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .name("wharf-loadgen-setup")
        .spawn(move || async move {
            let mut conn = Conn::connect(bootstrap, &client_id).await?;
            discover(&mut conn, &topic, create, timeout).await
        })
        .map_err(|e| anyhow::anyhow!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("setup executor: {e}"))??;
    let plans = plan(args, &layout, bootstrap)?;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let workload = Workload {
        mode: args.mode,
        topic: args.topic.clone(),
        client_id: args.client_id.clone(),
        seed,
        acks: args.acks,
        idempotent: args.idempotent || args.transactional,
        transactions: args.transactional.then(|| TxnSettings {
            transactional_id_prefix: args.transactional_id_prefix.clone(),
            records_per_txn: args.records_per_txn,
            transaction_timeout_ms: args.transaction_timeout_ms,
            abort_ratio: args.abort_ratio,
        }),
        isolation_level: args.isolation_level,
        compression: args.compression,
        keys: args.keys.clone(),
        record_size: args.record_size,
        batch_size: args.batch_size,
        linger_ns: (args.linger_ms * 1e6) as u64,
        in_flight: args.in_flight,
        request_timeout_ms: args.request_timeout_ms,
        rate: args.rate,
        total_producers: args.total_producers(),
        from: args.from,
        fetch_max_wait_ms: args.fetch_max_wait_ms,
        fetch_min_bytes: args.fetch_min_bytes,
        fetch_max_bytes: args.fetch_max_bytes,
        partition_max_bytes: args.partition_max_bytes,
        group: args.group.as_ref().map(|g| GroupSettings {
            group_id: g.clone(),
            session_timeout_ms: args.session_timeout_ms,
            heartbeat_interval_ms: args.heartbeat_interval_ms,
            auto_commit_interval_ms: args.auto_commit_interval_ms,
        }),
        run_id: (args.mode == Mode::E2e).then_some(seed | 1),
        consume_target: if args.mode == Mode::Consume {
            args.records
        } else {
            None
        },
        start_ns: 0,
        warmup_end_ns: 0,
        stop_ns: 0,
        drain_ns: (args.drain_timeout * 1e9) as u64,
    };
    let clock = Clock::new(Instant::now());
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel::<(usize, CoreMsg)>();
    let mut go_senders = Vec::new();
    let mut handles = Vec::new();
    for (core, plan) in plans.into_iter().enumerate() {
        let (go_tx, go_rx) = mpsc::channel::<Timing>();
        go_senders.push(go_tx);
        let placement = match args.cpus.get(core) {
            Some(cpu) => Placement::Fixed(*cpu),
            None => Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .name(&format!("wharf-loadgen-{core}"));
        if args.spin_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(args.spin_us));
        }
        let (tx, workload, shared) = (tx.clone(), workload.clone(), shared.clone());
        let handle = builder
            .spawn(move || core_main(core, plan, workload, shared, clock, tx, go_rx))
            .map_err(|e| anyhow::anyhow!("cannot start the executor for core {core}: {e}"))?;
        handles.push(handle);
    }
    drop(tx);

    // Wait until every core is connected, then start them together.
    let joining_since = Instant::now();
    if let (Some(group), false) = (&args.group, args.quiet) {
        println!(
            "joining group {group} with {} members (the coordinator may wait \
             group.initial.rebalance.delay.ms for more)",
            args.total_consumers()
        );
    }
    let mut ready = 0;
    while ready < args.cores {
        match rx.recv() {
            Ok((_, CoreMsg::Ready)) => ready += 1,
            Ok((core, CoreMsg::Failed(e))) => {
                drop(go_senders);
                bail!("core {core}: {e}");
            }
            Ok(_) => {}
            Err(_) => bail!("a core stopped before it was ready"),
        }
    }
    if let (Some(group), false) = (&args.group, args.quiet) {
        println!(
            "group {group}: every member has its assignment after {:.1} s",
            joining_since.elapsed().as_secs_f64()
        );
    }
    let start_ns = clock.now_ns() + START_DELAY.as_nanos() as u64;
    let warmup_ns = (args.warmup_secs() * 1e9) as u64;
    let warmup_end_ns = start_ns + warmup_ns;
    let stop_ns = match args.measured_duration() {
        Some(d) => warmup_end_ns + (d * 1e9) as u64,
        None => NO_STOP_NS,
    };
    for go in &go_senders {
        let _ = go.send(Timing {
            start_ns,
            warmup_end_ns,
            stop_ns,
        });
    }

    // Collect ticks; print each interval once every core has reported it.
    let first_index = first_tick_index(warmup_ns);
    let mut intervals: BTreeMap<i64, (Stats, Vec<bool>)> = BTreeMap::new();
    let mut done_at: Vec<Option<i64>> = vec![None; args.cores];
    let mut printed = first_index - 1;
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut group_stats = GroupStats::default();
    let interval_secs = |index: i64| (warmup_ns as f64 / 1e9) + index as f64;
    while done_at.iter().any(Option::is_none) {
        let Ok((core, msg)) = rx.recv() else { break };
        let (index, stats) = match msg {
            CoreMsg::Tick { index, stats } => (index, stats),
            CoreMsg::Done {
                index,
                stats,
                group,
            } => {
                done_at[core] = Some(index);
                group_stats.add(&group);
                (index, stats)
            }
            CoreMsg::Failed(e) => {
                failures.push(format!("core {core}: {e}"));
                done_at[core] = Some(i64::MIN);
                continue;
            }
            CoreMsg::Ready => continue,
        };
        let entry = intervals
            .entry(index)
            .or_insert_with(|| (Stats::new(), vec![false; args.cores]));
        entry.0.add(&stats);
        entry.1[core] = true;
        // Print every interval that is complete.
        loop {
            let next = printed + 1;
            let Some((stats, seen)) = intervals.get(&next) else {
                break;
            };
            let complete = (0..args.cores).all(|c| seen[c] || done_at[c].is_some_and(|d| d < next));
            if !complete {
                break;
            }
            let line = IntervalLine::new(interval_secs(next), next <= 0, stats);
            if !args.quiet {
                println!("{}", line.render(args.mode));
            }
            lines.push(line);
            printed = next;
        }
    }
    for handle in handles {
        handle
            .join()
            .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }

    let mut total = Stats::new();
    for (index, (stats, _)) in &intervals {
        if *index >= 1 {
            total.add(stats);
        }
    }
    // The measured time ends at the stop time, or later if acknowledgements came after it;
    // a --records run ends with its last acknowledgement.
    let measured_end_ns = if args.records.is_some() {
        total.last_event_ns
    } else {
        stop_ns.max(total.last_event_ns)
    };
    let measured_secs = measured_end_ns.saturating_sub(warmup_end_ns) as f64 / 1e9;
    let mut report = Report::new(
        args,
        &layout,
        machine_description(load_average_start),
        measured_secs,
        &total,
        lines,
    );
    if let Some(group) = &args.group {
        report.group = Some(crate::report::GroupReport::new(group, &group_stats));
    }
    Ok(report)
}

/// Index of the first tick: ticks fall at `warmup_end + k` seconds, and the first is the
/// first one after the start.
fn first_tick_index(warmup_ns: u64) -> i64 {
    -((warmup_ns / NS_PER_SEC) as i64) + i64::from(warmup_ns % NS_PER_SEC == 0)
}

async fn core_main(
    core: usize,
    plan: CorePlan,
    mut workload: Workload,
    shared: Arc<Shared>,
    clock: Clock,
    tx: mpsc::Sender<(usize, CoreMsg)>,
    go: mpsc::Receiver<Timing>,
) {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let setup = Rc::new(workload.clone());
    let group = Rc::new(CoreGroup::default());
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    let mut members = Vec::new();
    let connected: anyhow::Result<()> = async {
        for (index, leader, partitions, budget) in plan.producers {
            let p = Producer::connect(
                index,
                leader,
                partitions,
                budget,
                setup.clone(),
                shared.clone(),
                clock,
                stats.clone(),
            )
            .await
            .with_context(|| format!("producer {index}"))?;
            producers.push(p);
        }
        for (leader, partitions) in plan.consumers {
            let c = Consumer::connect(
                leader,
                partitions,
                setup.clone(),
                shared.clone(),
                clock,
                stats.clone(),
            )
            .await
            .context("consumer")?;
            consumers.push(c);
        }
        // Members join at once (a member joining later would make the others rejoin).
        let layout = Rc::new(plan.layout.clone());
        for &index in &plan.members {
            let member = Member::new(
                index,
                layout.clone(),
                plan.bootstrap,
                setup.clone(),
                shared.clone(),
                clock,
                stats.clone(),
                group.clone(),
            );
            members.push(glommio::spawn_local(member.run()));
        }
        while group.assigned.get() < plan.members.len() {
            if let Some(failure) = group.failure.borrow().as_ref() {
                bail!("{failure}");
            }
            glommio::timer::sleep(START_POLL).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = connected {
        let _ = tx.send((core, CoreMsg::Failed(format!("{e:#}"))));
        return;
    }
    let _ = tx.send((core, CoreMsg::Ready));
    let timing = if members.is_empty() {
        // Blocking here is fine: nothing else runs on this core until the start.
        let Ok(timing) = go.recv() else { return };
        timing
    } else {
        // Group members must keep heartbeating (and rejoin if the group rebalances).
        loop {
            match go.try_recv() {
                Ok(timing) => break timing,
                Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(START_POLL).await,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
    };
    workload.start_ns = timing.start_ns;
    workload.warmup_end_ns = timing.warmup_end_ns;
    workload.stop_ns = timing.stop_ns;
    let workload = Rc::new(workload);
    *group.started.borrow_mut() = Some(workload.clone());

    // Every core starts the load at the same instant, the one the measured time counts from.
    glommio::timer::sleep(
        clock
            .instant(workload.start_ns)
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let mut tasks = Vec::new();
    for p in producers {
        let w = workload.clone();
        tasks.push(glommio::spawn_local(async move { p.run_with(w).await }));
    }
    for c in consumers {
        let w = workload.clone();
        tasks.push(glommio::spawn_local(async move { c.run_with(w).await }));
    }
    tasks.extend(members);
    let running = Rc::new(std::cell::Cell::new(true));
    let ticker = {
        let (stats, running, tx, workload) =
            (stats.clone(), running.clone(), tx.clone(), workload.clone());
        glommio::spawn_local(async move {
            let mut index = first_tick_index(workload.warmup_end_ns - workload.start_ns);
            loop {
                let at = workload.warmup_end_ns as i64 + index * NS_PER_SEC as i64;
                glommio::timer::sleep(
                    clock
                        .instant(at as u64)
                        .saturating_duration_since(Instant::now()),
                )
                .await;
                if !running.get() {
                    return index;
                }
                let interval = std::mem::take(&mut *stats.borrow_mut());
                let _ = tx.send((
                    core,
                    CoreMsg::Tick {
                        index,
                        stats: Box::new(interval),
                    },
                ));
                index += 1;
            }
        })
    };
    for t in tasks {
        t.await;
    }
    running.set(false);
    // The ticker is asleep until its next tick; the rest of the stats go with Done under
    // that tick's index.
    let index = {
        let at = |i: i64| workload.warmup_end_ns as i64 + i * NS_PER_SEC as i64;
        let now = clock.now_ns() as i64;
        let mut i = first_tick_index(workload.warmup_end_ns - workload.start_ns);
        while at(i) < now {
            i += 1;
        }
        i
    };
    drop(ticker);
    let rest = std::mem::take(&mut *stats.borrow_mut());
    let group_stats = std::mem::take(&mut *group.stats.borrow_mut());
    let _ = tx.send((
        core,
        CoreMsg::Done {
            index,
            stats: Box::new(rest),
            group: Box::new(group_stats),
        },
    ));
}
