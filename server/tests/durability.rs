//! acks=all means durable: a producer records every acknowledged offset while the broker is
//! killed with SIGKILL, several times; after a restart every acknowledged record is read back
//! at its offset, in order, exactly once per offset.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;

use common::client;
use common::{unique_topic, Broker};

const PARTITIONS: i32 = 4;
const KILLS: u32 = 5;
/// Acknowledged records per broker run before the kill (the kill lands while more are in flight).
const ACKS_BEFORE_KILL: usize = 1000;
/// Records the producer keeps queued or in flight at any time.
const IN_FLIGHT: usize = 200;
/// Guard against a broker that stops acknowledging; not a timing assertion.
const ROUND_GUARD: Duration = Duration::from_secs(180);

#[test]
fn acks_all_records_survive_sigkill_in_order_exactly_once_per_offset() {
    let partitions = PARTITIONS.to_string();
    let mut broker = Broker::start_with(&["--num-partitions", &partitions]);
    let topic = unique_topic("durable");
    let rt = client::runtime();

    // (partition, offset) -> payload, for every record the broker acknowledged.
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    // Per partition and run: offsets in the order the records were sent.
    let mut send_order: HashMap<(i32, u32), Vec<i64>> = HashMap::new();

    for run in 0..KILLS {
        if run > 0 {
            broker.restart();
        }
        let mut producer = Some(client::producer(
            &broker.bootstrap(),
            &[
                ("acks", "all"),
                ("linger.ms", "2"),
                // Compressed batches go through the same recovery scan as plain ones.
                ("compression.type", "lz4"),
                // One request at a time per connection keeps send order = offset order.
                ("max.in.flight.requests.per.connection", "1"),
                ("message.timeout.ms", "10000"),
            ],
        ));
        let mut acked_this_run = 0usize;
        let mut killed = false;
        let deadline = Instant::now() + ROUND_GUARD;
        rt.block_on(async {
            let mut pending = VecDeque::new();
            let mut seq = 0u64;
            loop {
                while !killed && pending.len() < IN_FLIGHT {
                    let key = format!("k{seq}");
                    let payload = format!("run{run}-seq{seq}-{}", "x".repeat(100));
                    let Some(p) = producer.as_ref() else { break };
                    match p.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                        Ok(fut) => pending.push_back((payload, fut)),
                        Err((e, _)) => panic!("cannot enqueue: {e}"),
                    }
                    seq += 1;
                }
                let Some((payload, fut)) = pending.pop_front() else {
                    break;
                };
                if let Ok(Ok(delivery)) = fut.await {
                    let previous =
                        acked.insert((delivery.partition, delivery.offset), payload.clone());
                    // Offsets are never reused: the same offset acknowledged twice means the
                    // record acknowledged first was lost.
                    assert!(
                        previous.is_none(),
                        "offset {}/{} acknowledged twice: first for {:?}, now for {payload:?}",
                        delivery.partition,
                        delivery.offset,
                        previous
                    );
                    send_order
                        .entry((delivery.partition, run))
                        .or_default()
                        .push(delivery.offset);
                    acked_this_run += 1;
                }
                if !killed && acked_this_run >= ACKS_BEFORE_KILL {
                    broker.kill();
                    killed = true;
                    // Dropping the producer purges what is queued or in flight, so those
                    // futures resolve now (unacknowledged) instead of at message.timeout.ms.
                    drop(producer.take());
                }
                assert!(
                    Instant::now() < deadline,
                    "run {run}: only {acked_this_run} acknowledgements"
                );
            }
        });
        assert!(killed && acked_this_run >= ACKS_BEFORE_KILL);
    }

    broker.restart();
    let read = client::read_all(&broker.bootstrap(), &topic);
    for (p, msgs) in &read {
        let offsets: Vec<i64> = msgs.iter().map(|m| m.offset()).collect();
        let expected: Vec<i64> = (0..msgs.len() as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {p}: offsets must be dense, in order, each once"
        );
    }
    let mut checked = 0;
    for ((p, offset), payload) in &acked {
        let msgs = read
            .get(p)
            .unwrap_or_else(|| panic!("partition {p} vanished"));
        let m = msgs.get(*offset as usize).unwrap_or_else(|| {
            panic!(
                "acknowledged offset {p}/{offset} was lost (log has {} records)",
                msgs.len()
            )
        });
        let got = String::from_utf8_lossy(m.payload().unwrap_or_default());
        assert_eq!(got, *payload, "acknowledged record {p}/{offset} changed");
        checked += 1;
    }
    // Within a run, records were acknowledged in send order: their offsets increase.
    for ((p, run), offsets) in &send_order {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p} run {run}: offsets out of send order"
        );
    }
    assert!(checked >= (KILLS as usize) * ACKS_BEFORE_KILL);
    broker.assert_no_panic();
}
