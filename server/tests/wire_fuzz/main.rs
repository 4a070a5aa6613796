//! The wire fuzzer: seeded mutations of valid requests for every API and version the broker
//! advertises, run in this process through the broker's real decode, handler and encode
//! path (a one-shard broker on a temporary data directory). A panic, an answer that is not
//! a valid response of the request's version, a response over its bound, an allocation
//! over its bound, a response the broker could not encode, or a case that does not finish
//! (a handler stuck in a loop) fails the run, with the seed, the case and a one-line
//! command that replays it.
//!
//! `cargo test` runs a fixed budget (`--cases`, default below); `scripts/fuzz.sh --cases N
//! --seed S` runs longer on a release build; `--case K` runs the setup and case K alone.

mod alloc;
mod corpus;
mod mutate;
mod oracle;

use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};
use wharf_protocol::frame::peek_request_ids;
use wharf_server::config::{self, BrokerArgs};
use wharf_server::embedded::{self, Embedded, Outcome};

use mutate::Rng;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// Cases in the test suite's run (about 30 s on a debug build with two cores).
const DEFAULT_CASES: u64 = 50_000;
const DEFAULT_SEED: u64 = 0x5EED_0001;
/// A request still running after this is left running (a long poll, a parked JoinGroup)
/// and judged when it ends; the next case starts meanwhile.
const PARK_AFTER: Duration = Duration::from_millis(50);
/// Requests left running at once; past this the oldest is given up on.
const MAX_PARKED: usize = 64;
/// How long the end of a run waits for requests still running.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A request that keeps the shard's thread this long has it stuck: a loop, not a slow
/// machine (a case takes well under a millisecond).
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// The broker's settings: small budgets, so that the allocation bounds below mean something.
const SETTINGS: &str = "\
socket.request.max.bytes = 1048576
produce.inflight.max.bytes = 16777216
request.inflight.max.bytes = 8388608
log.cache.bytes = 4194304
conversion.inflight.max.bytes = 1048576
fetch.max.bytes = 1048576
max.broker.partitions = 300
offsets.topic.num.partitions = 4
log.segment.bytes = 1048576
group.initial.rebalance.delay.ms = 0
group.min.session.timeout.ms = 1
";
const FETCH_MAX_BYTES: usize = 1 << 20;
/// Responses that list the broker's state (groups, topics, configs): their bound.
const MAX_STATE_RESPONSE_BYTES: usize = 32 << 20;
/// No single allocation may be larger than this (or than a multiple of the request, for
/// the copies a request legitimately makes). Conversions decompress at most the conversion
/// budget (1 MiB here) per batch, into a buffer that may double once.
const MAX_SINGLE_ALLOCATION: usize = 4 << 20;
/// Live bytes may not grow past the level after setup by more than this: the broker's
/// budgets (produce, requests, cache) plus its state (topics, groups) and parked requests.
const MAX_LIVE_GROWTH: usize = 256 << 20;

static SEED: AtomicU64 = AtomicU64::new(0);
static CASE: AtomicU64 = AtomicU64::new(u64::MAX);
/// Requests submitted so far (seeds and cases): the watchdog's sign of life.
static SUBMITTED: AtomicU64 = AtomicU64::new(0);
/// The case number the unmutated seeds run under.
const SEED_CASE: u64 = u64::MAX;

struct Args {
    cases: u64,
    seed: u64,
    only_case: Option<u64>,
}

/// `None` when the test harness asks for something this binary does not do (a listing, or
/// a filter naming other tests).
fn parse_args() -> Option<Args> {
    let mut args = Args {
        cases: std::env::var("WHARF_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_CASES),
        seed: DEFAULT_SEED,
        only_case: None,
    };
    let mut filters = Vec::new();
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, v: Option<String>| -> u64 {
        let v = v.unwrap_or_else(|| panic!("{flag} needs a number"));
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.unwrap_or_else(|_| panic!("{flag}: `{v}` is not a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cases" => args.cases = number("--cases", it.next()),
            "--seed" => args.seed = number("--seed", it.next()),
            "--case" => args.only_case = Some(number("--case", it.next())),
            "--list" => return None,
            a if a.starts_with('-') => {} // the harness's own flags
            a => filters.push(a.to_string()),
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| "wire_fuzz".contains(f.as_str())) {
        return None;
    }
    Some(args)
}

fn replay_lines(seed: u64, case: u64) -> String {
    format!(
        "  replay this case alone:     scripts/fuzz.sh --seed {seed:#x} --case {case}\n  \
         replay the run up to it:    scripts/fuzz.sh --seed {seed:#x} --cases {}",
        case + 1
    )
}

fn fail(case: u64, what: &str, frame: &[u8]) -> ! {
    let seed = SEED.load(Relaxed);
    let shown: String = frame.iter().take(256).map(|b| format!("{b:02x}")).collect();
    let (at, replay) = if case == SEED_CASE {
        // Every run starts with the seeds: any command that runs the fuzzer replays it.
        ("an unmutated seed".to_string(), replay_lines(seed, 0))
    } else {
        (format!("case {case}"), replay_lines(seed, case))
    };
    eprintln!(
        "\nwire fuzz FAILED at {at} (seed {seed:#x}): {what}\n  request ({} bytes): {shown}{}\n{replay}",
        frame.len(),
        if frame.len() > 256 { "..." } else { "" },
    );
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}

fn main() {
    let Some(args) = parse_args() else {
        return;
    };
    SEED.store(args.seed, Relaxed);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let case = CASE.load(Relaxed);
        let seed = SEED.load(Relaxed);
        if case == u64::MAX {
            eprintln!("\nwire fuzz FAILED during setup (seed {seed:#x}): the broker panicked");
        } else {
            eprintln!(
                "\nwire fuzz FAILED at case {case} (seed {seed:#x}): the broker panicked\n{}",
                replay_lines(seed, case)
            );
        }
        let _ = std::io::stderr().flush();
        std::process::exit(1);
    }));

    watch_for_a_stuck_shard();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let settings = dir.path().join("wharf.toml");
    std::fs::write(&settings, SETTINGS).expect("write the settings");
    let broker_args = BrokerArgs {
        config: Some(settings),
        data_dir: Some(dir.path().join("data")),
        shards: Some(1),
        ..BrokerArgs::default()
    };
    let config = config::resolve(&broker_args, 1).expect("the fuzz settings resolve");
    let started = Instant::now();
    let summary = embedded::run(config, move |broker| fuzz(Rc::new(broker), args))
        .unwrap_or_else(|e| panic!("the embedded broker did not start: {e}"));
    println!("{summary} in {:.1} s", started.elapsed().as_secs_f64());
}

/// Fails the run if no request is submitted for [`STUCK_AFTER`]: the shard's one thread is
/// held by a handler that does not return.
fn watch_for_a_stuck_shard() {
    std::thread::spawn(|| {
        let mut last = SUBMITTED.load(Relaxed);
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = SUBMITTED.load(Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= STUCK_AFTER {
                let seed = SEED.load(Relaxed);
                let case = CASE.load(Relaxed);
                let during = if case == u64::MAX {
                    "setup or the seeds".to_string()
                } else {
                    format!("case {case}")
                };
                eprintln!(
                    "\nwire fuzz FAILED at {during} (seed {seed:#x}): no progress for {STUCK_AFTER:?}, the shard is stuck in a handler"
                );
                if case != u64::MAX {
                    eprintln!("{}", replay_lines(seed, case));
                }
                let _ = std::io::stderr().flush();
                std::process::exit(1);
            }
        }
    });
}

#[derive(Default)]
struct Counts {
    responses: u64,
    closed: u64,
    no_response: u64,
    parked: u64,
    abandoned: u64,
    largest_allocation: usize,
    peak_live_growth: usize,
}

/// A request frame (no size prefix): header for `api_key`/`version`, then `body`.
fn frame(api_key: ApiKey, version: i16, correlation_id: i32, body: &[u8]) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("wharf-fuzz")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .expect("a request header encodes");
    buf.put_slice(body);
    buf.freeze()
}

struct Pending {
    case: u64,
    frame: Bytes,
    task: glommio::Task<Outcome>,
}

fn judge(case: u64, frame: &Bytes, outcome: Outcome, counts: &mut Counts) {
    let Some(ids) = peek_request_ids(frame) else {
        match outcome {
            Outcome::Closed(_) => {
                counts.closed += 1;
                return;
            }
            _ => fail(case, "a frame shorter than a header was answered", frame),
        }
    };
    match outcome {
        Outcome::Response(response) => {
            counts.responses += 1;
            // A Fetch answer is bounded by fetch.max.bytes (its first batch may pass it, by
            // up to max.message.bytes); the others by the broker's state, which a long run
            // grows (ListGroups lists every group the fuzzer made).
            let bound = if ids.api_key == ApiKey::Fetch as i16 {
                FETCH_MAX_BYTES + (1 << 20) + 64 * frame.len()
            } else {
                MAX_STATE_RESPONSE_BYTES + 64 * frame.len()
            };
            if let Err(e) = oracle::check(
                ids.api_key,
                ids.api_version,
                ids.correlation_id,
                &response,
                bound,
            ) {
                fail(
                    case,
                    &format!("api key {} v{}: {e}", ids.api_key, ids.api_version),
                    frame,
                );
            }
        }
        Outcome::NoResponse if ids.api_key == ApiKey::Produce as i16 => counts.no_response += 1,
        Outcome::NoResponse => fail(
            case,
            &format!("api key {} got no response", ids.api_key),
            frame,
        ),
        Outcome::Closed(why) if case == SEED_CASE => fail(
            case,
            &format!(
                "the seed for api key {} v{} does not decode ({why}): the corpus must hold real requests",
                ids.api_key, ids.api_version
            ),
            frame,
        ),
        Outcome::Closed(_) => counts.closed += 1,
        Outcome::EncodeFailed(e) => fail(
            case,
            &format!(
                "api key {} v{}: the broker could not encode its response: {e}",
                ids.api_key, ids.api_version
            ),
            frame,
        ),
    }
}

/// Checks the allocations since the last mark against the bounds.
fn check_memory(case: u64, frame: &Bytes, baseline: usize, counts: &mut Counts) {
    let largest = alloc::largest();
    counts.largest_allocation = counts.largest_allocation.max(largest);
    if largest > MAX_SINGLE_ALLOCATION.max(64 * frame.len()) {
        fail(
            case,
            &format!("an allocation of {largest} bytes, past the bound"),
            frame,
        );
    }
    let growth = alloc::peak_live().saturating_sub(baseline);
    counts.peak_live_growth = counts.peak_live_growth.max(growth);
    if growth > MAX_LIVE_GROWTH {
        fail(
            case,
            &format!("{growth} bytes live beyond the level after setup, past the bound"),
            frame,
        );
    }
}

async fn run_one(broker: &Rc<Embedded>, frame: Bytes) -> Result<Outcome, glommio::Task<Outcome>> {
    let b = broker.clone();
    let f = frame.clone();
    let mut task = glommio::spawn_local(async move { b.request(f).await });
    let done = futures_lite::future::or(async { Some((&mut task).await) }, async {
        glommio::timer::sleep(PARK_AFTER).await;
        None
    })
    .await;
    match done {
        Some(outcome) => Ok(outcome),
        None => Err(task),
    }
}

/// Runs one request: judged at once if it finishes soon, else left running and judged when
/// it ends; requests left running that have finished are judged too.
async fn submit(
    broker: &Rc<Embedded>,
    case: u64,
    frame: Bytes,
    parked: &mut VecDeque<Pending>,
    counts: &mut Counts,
) {
    SUBMITTED.fetch_add(1, Relaxed);
    match run_one(broker, frame.clone()).await {
        Ok(outcome) => judge(case, &frame, outcome, counts),
        Err(task) => {
            counts.parked += 1;
            parked.push_back(Pending { case, frame, task });
        }
    }
    let mut still = VecDeque::with_capacity(parked.len());
    while let Some(mut p) = parked.pop_front() {
        match futures_lite::future::poll_once(&mut p.task).await {
            Some(outcome) => judge(p.case, &p.frame, outcome, counts),
            None => still.push_back(p),
        }
    }
    *parked = still;
    if parked.len() > MAX_PARKED {
        // The oldest waits longest (a long poll, a JoinGroup for a group that never
        // completes): give up on it, as a client closing its connection would.
        drop(parked.pop_front());
        counts.abandoned += 1;
    }
}

/// The ids of the topics the setup made (Metadata v12 lists them).
async fn topic_ids(broker: &Embedded) -> corpus::TopicIds {
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use kafka_protocol::protocol::Decodable;
    let mut body = BytesMut::new();
    MetadataRequest::default()
        .with_topics(None)
        .encode(&mut body, 12)
        .expect("a Metadata request encodes");
    let Outcome::Response(mut response) =
        broker.request(frame(ApiKey::Metadata, 12, 0, &body)).await
    else {
        panic!("setup: Metadata was not answered");
    };
    bytes::Buf::advance(&mut response, 4);
    kafka_protocol::messages::ResponseHeader::decode(&mut response, 1)
        .expect("setup: a Metadata response header");
    let metadata = MetadataResponse::decode(&mut response, 12).expect("setup: a Metadata response");
    metadata
        .topics
        .into_iter()
        .filter_map(|t| Some((t.name?.0.to_string(), t.topic_id)))
        .collect()
}

/// The setup's transactional producer: InitProducerId for [`corpus::TRANSACTIONAL_ID`],
/// retried while its coordinator loads.
async fn transactional_producer(broker: &Embedded) -> corpus::Producer {
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    use kafka_protocol::protocol::Decodable;
    const VERSION: i16 = 4;
    let mut body = BytesMut::new();
    InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(
            corpus::TRANSACTIONAL_ID,
        ))))
        .with_transaction_timeout_ms(60_000)
        .encode(&mut body, VERSION)
        .expect("an InitProducerId request encodes");
    for _ in 0..500 {
        let Outcome::Response(mut response) = broker
            .request(frame(ApiKey::InitProducerId, VERSION, 0, &body))
            .await
        else {
            panic!("setup: InitProducerId was not answered");
        };
        bytes::Buf::advance(&mut response, 4);
        kafka_protocol::messages::ResponseHeader::decode(&mut response, 1)
            .expect("setup: an InitProducerId response header");
        let answer = InitProducerIdResponse::decode(&mut response, VERSION)
            .expect("setup: an InitProducerId response");
        if answer.error_code == 0 {
            return corpus::Producer {
                producer_id: answer.producer_id.0,
                producer_epoch: answer.producer_epoch,
            };
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    panic!("setup: the transaction coordinator never gave the fuzzer a producer id");
}

async fn fuzz(broker: Rc<Embedded>, args: Args) -> String {
    let mut counts = Counts::default();
    // The stage: topics, records, a group.
    for (i, (key, version, body)) in corpus::setup().into_iter().enumerate() {
        let frame = frame(key, version, i as i32, &body);
        match broker.request(frame.clone()).await {
            Outcome::Response(response) => {
                if let Err(e) = oracle::check(key as i16, version, i as i32, &response, usize::MAX)
                {
                    panic!("setup request {key:?} v{version}: {e}");
                }
            }
            other => panic!("setup request {key:?} v{version}: {other:?}"),
        }
    }
    let ids = topic_ids(&broker).await;
    assert!(
        ids.get(corpus::TOPIC).is_some_and(|id| !id.is_nil()),
        "setup: the topics have no ids"
    );
    let producer = transactional_producer(&broker).await;
    let seeds = corpus::all(&ids, producer);
    let mut parked: VecDeque<Pending> = VecDeque::new();
    // Every seed as it is, through the same path as the cases (some wait for a group).
    for seed in &seeds {
        for body in &seed.bodies {
            let frame = frame(seed.api_key, seed.version, 1, body);
            submit(&broker, SEED_CASE, frame, &mut parked, &mut counts).await;
        }
    }
    let versions = seeds.len();
    let baseline = alloc::live();
    let range = match args.only_case {
        Some(k) => k..k + 1,
        None => 0..args.cases,
    };
    let mut last_report = Instant::now();
    let run_started = Instant::now();
    for case in range.clone() {
        CASE.store(case, Relaxed);
        let mut rng = Rng::for_case(args.seed, case);
        let seed = &seeds[rng.below(seeds.len())];
        let body = rng.pick(&seed.bodies);
        let other = rng.pick(&seed.bodies);
        let mut bytes = body.to_vec();
        // Some cases go through unmutated, so the valid paths keep running too.
        if rng.chance(95) {
            mutate::mutate(&mut rng, &mut bytes, other);
            // Mostly with the checksums of the records made right again, so that mutated
            // records (and compressed data) get past the CRC to the decoders behind it.
            if rng.chance(50) {
                mutate::fix_checksums(&mut bytes);
            }
        }
        let correlation_id = (case % i32::MAX as u64) as i32;
        let mut frame = frame(seed.api_key, seed.version, correlation_id, &bytes);
        if rng.chance(3) {
            // The header too: api key, version, client id, tagged fields.
            let mut whole = frame.to_vec();
            mutate::mutate(&mut rng, &mut whole, &[]);
            frame = Bytes::from(whole);
        }
        alloc::mark();
        submit(&broker, case, frame.clone(), &mut parked, &mut counts).await;
        check_memory(case, &frame, baseline, &mut counts);
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let done = case + 1 - range.start;
            eprintln!(
                "wire fuzz: {done} cases, {:.0}/s, {} parked",
                done as f64 / run_started.elapsed().as_secs_f64(),
                parked.len()
            );
        }
    }
    CASE.store(u64::MAX, Relaxed);
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while let Some(mut p) = parked.pop_front() {
        let left = drain_until.saturating_duration_since(Instant::now());
        let outcome = futures_lite::future::or(async { Some((&mut p.task).await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        match outcome {
            Some(outcome) => judge(p.case, &p.frame, outcome, &mut counts),
            // A long poll or a JoinGroup waiting for its group: nothing wrong, just long.
            None => counts.abandoned += 1,
        }
    }
    let cases = range.end - range.start;
    format!(
        "wire fuzz: {cases} cases over {versions} API versions (seed {:#x}): {} responses, {} \
         closed, {} without response, {} left running ({} given up on); largest \
         allocation {} KiB, live memory at most {} KiB above the level after setup",
        args.seed,
        counts.responses,
        counts.closed,
        counts.no_response,
        counts.parked,
        counts.abandoned,
        counts.largest_allocation / 1024,
        counts.peak_live_growth / 1024,
    )
}
