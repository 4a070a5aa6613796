//! Transactional producing (KIP-98): a transactional id per producer, its coordinator
//! (FindCoordinator key type 1), a producer id and epoch from InitProducerId with that id,
//! then per transaction AddPartitionsToTxn for the producer's partitions, transactional
//! batches stamped like an idempotent producer's, and EndTxn to commit (or abort).
//!
//! The coordinator gets its own connection, so that the control requests never wait behind
//! (or are mistaken for) the pipelined Produce answers on the partition leader's connection.
//! A transaction ends only once every Produce request in it has been answered: EndTxn then
//! covers exactly the records the broker acknowledged.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, FindCoordinatorRequest, ProducerId,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::conn::Conn;
use crate::idempotence::{init_producer_id, ProducerIdentity};
use crate::stats::kafka_error_name;

/// FindCoordinator v1 is the first with a key type (1: transaction); v4 batches keys.
const FIND_COORDINATOR_VERSIONS: RangeInclusive<i16> = 1..=3;
/// AddPartitionsToTxn as a client sends it: v4 and later are the broker-to-broker batched
/// form (KIP-890), which clients may not use.
pub const ADD_PARTITIONS_TO_TXN_VERSIONS: RangeInclusive<i16> = 0..=3;
/// EndTxn v0-v3 (v3 flexible); v4 adds TRANSACTION_ABORTABLE, v5 KIP-890 part 2 epochs.
const END_TXN_VERSIONS: RangeInclusive<i16> = 0..=3;
/// Pause between tries of a coordinator that is still loading or moving (retry.backoff.ms).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Pause before AddPartitionsToTxn is sent again after CONCURRENT_TRANSACTIONS: the
/// coordinator is still writing the previous transaction's markers after answering its
/// EndTxn. The Java producer waits 20 ms here rather than `retry.backoff.ms`.
const ADD_PARTITIONS_RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// Codes on which Kafka's producer tries again rather than giving up.
fn retriable(code: i16) -> bool {
    matches!(
        code,
        14 // COORDINATOR_LOAD_IN_PROGRESS
        | 15 // COORDINATOR_NOT_AVAILABLE
        | 16 // NOT_COORDINATOR
        | 51 // CONCURRENT_TRANSACTIONS
    )
}

/// The transactional id of producer `index` in the run seeded `seed`: unique per run and
/// producer, so that no run fences another's producers.
pub fn transactional_id(prefix: &str, seed: u64, index: usize) -> String {
    format!("{prefix}-{seed:016x}-{index}")
}

/// One transactional producer's standing with its coordinator.
pub struct Transactions {
    coordinator: Conn,
    transactional_id: String,
    identity: ProducerIdentity,
    add_version: i16,
    end_version: i16,
    timeout: Duration,
}

impl Transactions {
    /// Finds the coordinator of `transactional_id` (asking through `conn`) and gets a
    /// producer id and epoch from it. `Ok(Err(text))` is the broker's refusal, by Kafka
    /// error name and the request it answered, for the caller to count.
    pub async fn init(
        conn: &mut Conn,
        client_id: &str,
        transactional_id: String,
        transaction_timeout_ms: i32,
        timeout: Duration,
    ) -> anyhow::Result<Result<Transactions, String>> {
        let give_up = Instant::now() + timeout;
        let mut coordinator = loop {
            match find_coordinator(conn, client_id, &transactional_id, give_up).await? {
                Ok(c) => break c,
                Err(code) if retriable(code) && Instant::now() < give_up => {
                    glommio::timer::sleep(RETRY_BACKOFF).await
                }
                Err(code) => {
                    return Ok(Err(format!("{} (FindCoordinator)", kafka_error_name(code))))
                }
            }
        };
        let add_version = coordinator
            .version(ApiKey::AddPartitionsToTxn, ADD_PARTITIONS_TO_TXN_VERSIONS)
            .map_err(|e| anyhow!("{e} (--transactional needs it)"))?;
        let end_version = coordinator
            .version(ApiKey::EndTxn, END_TXN_VERSIONS)
            .map_err(|e| anyhow!("{e} (--transactional needs it)"))?;
        let identity = loop {
            let remaining = give_up.saturating_duration_since(Instant::now());
            match init_producer_id(
                &mut coordinator,
                Some(&transactional_id),
                transaction_timeout_ms,
                remaining.max(RETRY_BACKOFF),
            )
            .await?
            {
                Ok(identity) => break identity,
                Err((code, _)) if retriable(code) && Instant::now() < give_up => {
                    glommio::timer::sleep(RETRY_BACKOFF).await
                }
                Err((_, name)) => return Ok(Err(format!("{name} (InitProducerId)"))),
            }
        };
        Ok(Ok(Transactions {
            coordinator,
            transactional_id,
            identity,
            add_version,
            end_version,
            timeout,
        }))
    }

    pub fn identity(&self) -> ProducerIdentity {
        self.identity
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Adds `partitions` of `topic` to the transaction about to start, asking again while the
    /// coordinator is busy with the previous one (as Kafka's producer does); returns how many
    /// times it asked again. `Ok(Err(text))`: the coordinator refused (the first error, by
    /// Kafka name).
    pub async fn add_partitions(
        &mut self,
        topic: &kafka_protocol::messages::TopicName,
        partitions: &[i32],
    ) -> anyhow::Result<Result<u64, String>> {
        let give_up = Instant::now() + self.timeout;
        let mut retries = 0;
        loop {
            match self.add_partitions_once(topic, partitions).await? {
                Ok(()) => return Ok(Ok(retries)),
                Err(code) if retriable(code) && Instant::now() < give_up => {
                    retries += 1;
                    let backoff = if code == 51 {
                        ADD_PARTITIONS_RETRY_BACKOFF
                    } else {
                        RETRY_BACKOFF
                    };
                    glommio::timer::sleep(backoff).await;
                }
                Err(code) => {
                    return Ok(Err(format!(
                        "{} (AddPartitionsToTxn)",
                        kafka_error_name(code)
                    )))
                }
            }
        }
    }

    async fn add_partitions_once(
        &mut self,
        topic: &kafka_protocol::messages::TopicName,
        partitions: &[i32],
    ) -> anyhow::Result<Result<(), i16>> {
        let mut request = AddPartitionsToTxnRequest::default();
        request.v3_and_below_transactional_id =
            TransactionalId(StrBytes::from_string(self.transactional_id.clone()));
        request.v3_and_below_producer_id = ProducerId(self.identity.producer_id);
        request.v3_and_below_producer_epoch = self.identity.producer_epoch;
        let mut t = AddPartitionsToTxnTopic::default();
        t.name = topic.clone();
        t.partitions = partitions.to_vec();
        request.v3_and_below_topics = vec![t];
        let version = self.add_version;
        let response = self.call(version, &request, "AddPartitionsToTxn").await?;
        if response.error_code != 0 {
            return Ok(Err(response.error_code));
        }
        let refused = response
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| t.results_by_partition.iter())
            .map(|p| p.partition_error_code)
            .find(|code| *code != 0);
        if let Some(code) = refused {
            return Ok(Err(code));
        }
        Ok(Ok(()))
    }

    /// Commits (or aborts) the transaction. `Ok(Err(text))`: the coordinator refused.
    pub async fn end(&mut self, commit: bool) -> anyhow::Result<Result<(), String>> {
        let mut request = EndTxnRequest::default();
        request.transactional_id =
            TransactionalId(StrBytes::from_string(self.transactional_id.clone()));
        request.producer_id = ProducerId(self.identity.producer_id);
        request.producer_epoch = self.identity.producer_epoch;
        request.committed = commit;
        let version = self.end_version;
        let response = self.call(version, &request, "EndTxn").await?;
        if response.error_code != 0 {
            return Ok(Err(format!(
                "{} (EndTxn)",
                kafka_error_name(response.error_code)
            )));
        }
        Ok(Ok(()))
    }

    async fn call<R: kafka_protocol::protocol::Request>(
        &mut self,
        version: i16,
        request: &R,
        what: &str,
    ) -> anyhow::Result<R::Response> {
        let peer = self.coordinator.peer();
        self.coordinator
            .call_by(version, request, Instant::now() + self.timeout)
            .await
            .with_context(|| format!("{what} v{version} with {peer}"))?
            .ok_or_else(|| {
                anyhow!(
                    "no {what} answer from {peer} within {} ms",
                    self.timeout.as_millis()
                )
            })
    }
}

/// Asks `conn`'s broker for the coordinator of `transactional_id` and connects to it.
/// `Ok(Err(code))`: the broker answered with an error.
async fn find_coordinator(
    conn: &mut Conn,
    client_id: &str,
    transactional_id: &str,
    deadline: Instant,
) -> anyhow::Result<Result<Conn, i16>> {
    let version = conn
        .version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)
        .map_err(|e| anyhow!("{e} (--transactional needs it)"))?;
    let mut request = FindCoordinatorRequest::default();
    request.key = StrBytes::from_string(transactional_id.to_string());
    request.key_type = 1; // transaction
    let response = conn
        .call_by(version, &request, deadline)
        .await
        .with_context(|| format!("FindCoordinator v{version} with {}", conn.peer()))?
        .ok_or_else(|| anyhow!("no FindCoordinator answer from {}", conn.peer()))?;
    if response.error_code != 0 {
        return Ok(Err(response.error_code));
    }
    let (host, port) = (response.host.to_string(), response.port);
    let addr: SocketAddr = (
        host.as_str(),
        u16::try_from(port).context("transaction coordinator port")?,
    )
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve transaction coordinator {host}:{port}"))?
        .next()
        .with_context(|| format!("transaction coordinator {host}:{port} resolves to nothing"))?;
    Ok(Ok(Conn::connect(addr, client_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_differ_per_run_and_producer() {
        let a = transactional_id("wharf-loadgen", 0xabc, 0);
        assert_eq!(a, "wharf-loadgen-0000000000000abc-0");
        assert_ne!(a, transactional_id("wharf-loadgen", 0xabc, 1));
        assert_ne!(a, transactional_id("wharf-loadgen", 0xabd, 0));
    }

    #[test]
    fn coordinator_moves_and_concurrent_transactions_are_retried_authorization_is_not() {
        for code in [14, 15, 16, 51] {
            assert!(retriable(code), "{code}");
        }
        for code in [53, 31, 47, 90] {
            assert!(!retriable(code), "{code}");
        }
    }
}
