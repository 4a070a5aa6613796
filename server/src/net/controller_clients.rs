//! Kafka clients on a voter's controller listener (KIP-919): the admin client with
//! `bootstrap.controllers`, `kafka-metadata-quorum --bootstrap-controller`,
//! `kafka-cluster cluster-id --bootstrap-controller`.
//!
//! The controller listener (`crate::cluster::net`) tells a Kafka client's connection from a
//! node's by its first bytes and hands it here. What is served is the router's
//! `CONTROLLER_ROUTES` (ApiVersions, DescribeCluster, DescribeQuorum), with the client
//! listener's handlers. As on a Kafka controller, a request for any other API, or for a
//! version outside the served range (ApiVersions excepted, KIP-511), a request that does not
//! decode, or one larger than [`MAX_REQUEST_BYTES`], closes the connection. Requests are
//! answered one at a time, in order; a connection idle for `connections.max.idle.ms` is
//! closed, and a request that has started must arrive whole within the listener's frame
//! timeout.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use wharf_protocol::frame::decode_request_header;

use crate::cluster::net::{read_frame_of_at_most, KafkaClientConnection};
use crate::kafka::{router, Listener, RequestContext};
use crate::node::Shard;
use crate::shard::oneshot;

/// The largest request taken from a Kafka client on the controller listener. What it may
/// ask (ApiVersions, DescribeCluster, DescribeQuorum for one partition) takes a few hundred
/// bytes; this leaves room for long client ids and tagged fields, and bounds what one
/// connection can make the controller shard hold.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves one Kafka client's connection on the controller listener (the listener's
/// `KafkaClients`).
pub fn serve(
    shard: Rc<Shard>,
    connection: KafkaClientConnection,
) -> Pin<Box<dyn Future<Output = ()>>> {
    Box::pin(serve_connection(shard, connection))
}

async fn serve_connection(shard: Rc<Shard>, mut connection: KafkaClientConnection) {
    let peer = connection.peer;
    if let Err(why) = serve_requests(&shard, &mut connection).await {
        tracing::debug!(
            ?peer,
            "closing a Kafka client's connection to the controller listener: {why}"
        );
    }
    let _ = connection.writer.flush().await;
    connection.cut.shut_down();
}

/// Answers requests until the client closes the connection (`Ok`) or it must be closed.
async fn serve_requests(shard: &Rc<Shard>, c: &mut KafkaClientConnection) -> Result<(), String> {
    let idle = Duration::from_millis(shard.config.connections_max_idle_ms);
    loop {
        let next = futures_lite::future::or(
            async {
                Some(read_frame_of_at_most(&mut c.reader, &mut c.buf, MAX_REQUEST_BYTES).await)
            },
            async {
                glommio::timer::sleep(idle).await;
                None
            },
        )
        .await;
        let mut frame: Bytes = match next {
            None => return Err(format!("idle for {idle:?}")),
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => return Ok(()),
            Some(Err(e)) => return Err(e.to_string()),
        };
        let head = decode_request_header(&mut frame).map_err(|e| e.to_string())?;
        if !router::accepts(Listener::Controller, head.api_key, head.api_version) {
            // Kafka's controllers check the header against the APIs enabled on the listener
            // and close the connection (InvalidRequestException) when it is not one.
            return Err(format!(
                "api key {} v{} is not served on the controller listener",
                head.api_key, head.api_version
            ));
        }
        // Nothing waits for the request to be dispatched: requests are handled one by one.
        let (dispatched, _) = oneshot::channel();
        let ctx = RequestContext::new(shard.clone(), head, c.peer, None, dispatched)
            .on_controller_listener();
        let Some(response) = router::handle(ctx, frame).await.into_frame() else {
            return Err("the request could not be answered".into());
        };
        c.writer
            .write_all(&response)
            .await
            .map_err(|e| e.to_string())?;
        c.writer.flush().await.map_err(|e| e.to_string())?;
    }
}
