//! Owned frames ↔ bytes.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;

use super::types::*;
use super::{
    check_header_length, fb, uuid_from_fb, uuid_to_fb, verify_header, FrameError, LENGTH_BYTES,
    MAX_FETCH_PARTITIONS, MAX_FRAME_BYTES, MAX_HEADER_BYTES, PREFIX_BYTES,
};

/// Encodes a fetch request as a whole frame (frame-length field included).
pub fn encode_request(request: &FetchRequest) -> Result<Bytes, FrameError> {
    check_partition_count(request.partitions.len())?;
    let mut fbb = FlatBufferBuilder::with_capacity(64 + 96 * request.partitions.len());
    let partitions: Vec<_> = request
        .partitions
        .iter()
        .map(|p| {
            fb::FetchPartition::create(
                &mut fbb,
                &fb::FetchPartitionArgs {
                    topic_id: Some(&uuid_to_fb(p.topic_id)),
                    partition: p.partition,
                    current_leader_epoch: p.current_leader_epoch,
                    fetch_offset: p.fetch_offset,
                    last_fetched_epoch: p.last_fetched_epoch,
                    log_start_offset: p.log_start_offset,
                    max_bytes: p.max_bytes,
                    synced_offset: p.synced_offset,
                },
            )
        })
        .collect();
    let partitions = fbb.create_vector(&partitions);
    let body = fb::FetchRequest::create(
        &mut fbb,
        &fb::FetchRequestArgs {
            replica_id: request.replica_id,
            broker_epoch: request.broker_epoch,
            max_wait_ms: request.max_wait_ms,
            min_bytes: request.min_bytes,
            max_bytes: request.max_bytes,
            partitions: Some(partitions),
        },
    );
    let frame = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: request.correlation_id,
            body_type: fb::Body::FetchRequest,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(frame, None);
    head(fbb.finished_data(), 0)
}

/// Encodes what goes in front of a response's records: the frame-length field, the header
/// length, its CRC and the header. The caller sends it followed by each partition's
/// `records_bytes` bytes of records, in order, straight from where they are stored
/// (vectored writes; nothing is copied into a response buffer).
pub fn encode_response_head(
    correlation_id: i32,
    error_code: i16,
    partitions: &[PartitionHeader],
) -> Result<Bytes, FrameError> {
    check_partition_count(partitions.len())?;
    let mut fbb = FlatBufferBuilder::with_capacity(64 + 112 * partitions.len());
    let mut payload: u64 = 0;
    let mut offsets = Vec::with_capacity(partitions.len());
    for p in partitions {
        if p.records_bytes > 0 && (p.error_code != 0 || p.diverging_epoch.is_some()) {
            return Err(FrameError::BadValue(format!(
                "partition {} carries records with an error or a diverging epoch",
                p.partition
            )));
        }
        payload += u64::from(p.records_bytes);
        let diverging = p
            .diverging_epoch
            .map(|d| fb::EpochEndOffset::new(d.epoch, d.end_offset));
        offsets.push(fb::PartitionResponse::create(
            &mut fbb,
            &fb::PartitionResponseArgs {
                topic_id: Some(&uuid_to_fb(p.topic_id)),
                partition: p.partition,
                error_code: p.error_code,
                high_watermark: p.high_watermark,
                last_stable_offset: p.last_stable_offset,
                log_start_offset: p.log_start_offset,
                diverging_epoch: diverging.as_ref(),
                leader_epoch: p.leader_epoch,
                leader_id: p.leader_id,
                records_bytes: p.records_bytes,
            },
        ));
    }
    if error_code != 0 && !partitions.is_empty() {
        return Err(FrameError::BadValue(
            "a response with a request-level error carries no partitions".to_string(),
        ));
    }
    let partitions = fbb.create_vector(&offsets);
    let body = fb::FetchResponse::create(
        &mut fbb,
        &fb::FetchResponseArgs {
            error_code,
            partitions: Some(partitions),
        },
    );
    let frame = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id,
            body_type: fb::Body::FetchResponse,
            body: Some(body.as_union_value()),
        },
    );
    fbb.finish(frame, None);
    head(fbb.finished_data(), payload)
}

/// A whole response as the buffers to write, in order: the head, then each partition's
/// records (the `Bytes` given, not copied). `records_bytes` of each header is set from its
/// records.
pub fn encode_response(response: &FetchResponse) -> Result<Vec<Bytes>, FrameError> {
    let mut headers = Vec::with_capacity(response.partitions.len());
    for p in &response.partitions {
        let records_bytes = u32::try_from(p.records.len()).map_err(|_| FrameError::TooLarge {
            size: p.records.len(),
            max_bytes: MAX_FRAME_BYTES,
        })?;
        headers.push(PartitionHeader {
            records_bytes,
            ..p.header
        });
    }
    let mut out = Vec::with_capacity(1 + headers.len());
    out.push(encode_response_head(
        response.correlation_id,
        response.error_code,
        &headers,
    )?);
    out.extend(
        response
            .partitions
            .iter()
            .filter(|p| !p.records.is_empty())
            .map(|p| p.records.clone()),
    );
    Ok(out)
}

/// The prefix and header of a frame whose payload will be `payload` bytes.
fn head(header: &[u8], payload: u64) -> Result<Bytes, FrameError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(FrameError::TooLarge {
            size: header.len(),
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    let frame_length = (PREFIX_BYTES - LENGTH_BYTES) as u64 + header.len() as u64 + payload;
    if frame_length > MAX_FRAME_BYTES as u64 {
        return Err(FrameError::TooLarge {
            size: usize::try_from(frame_length).unwrap_or(usize::MAX),
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + header.len());
    out.put_u32(frame_length as u32);
    out.put_u32(header.len() as u32);
    out.put_u32(crc32c::crc32c(header));
    out.put_slice(header);
    Ok(out.freeze())
}

fn check_partition_count(count: usize) -> Result<(), FrameError> {
    if count > MAX_FETCH_PARTITIONS {
        return Err(FrameError::TooLarge {
            size: count,
            max_bytes: MAX_FETCH_PARTITIONS,
        });
    }
    Ok(())
}

/// Decodes one frame: its bytes after the frame-length field, as
/// [`super::split_frame`] returns them. A response's records are slices of `frame`.
pub fn decode_frame(frame: &Bytes) -> Result<Message, FrameError> {
    if frame.len() < PREFIX_BYTES - LENGTH_BYTES {
        return Err(FrameError::TooShort(frame.len()));
    }
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: frame.len(),
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    let header_length = u32::from_be_bytes(frame[0..4].try_into().expect("four bytes")) as usize;
    check_header_length(header_length, frame.len())?;
    let stored = u32::from_be_bytes(frame[4..8].try_into().expect("four bytes"));
    let header_start = PREFIX_BYTES - LENGTH_BYTES;
    let header = &frame[header_start..header_start + header_length];
    let computed = crc32c::crc32c(header);
    if computed != stored {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    let payload = frame.slice(header_start + header_length..);
    let root = verify_header(header)?;
    let missing = FrameError::Missing("its body");
    match root.body_type() {
        fb::Body::FetchRequest => {
            if !payload.is_empty() {
                return Err(FrameError::Malformed(format!(
                    "a fetch request followed by {} bytes",
                    payload.len()
                )));
            }
            let body = root.body_as_fetch_request().ok_or(missing)?;
            decode_request(root.correlation_id(), body).map(Message::FetchRequest)
        }
        fb::Body::FetchResponse => {
            let body = root.body_as_fetch_response().ok_or(missing)?;
            decode_response(root.correlation_id(), body, payload).map(Message::FetchResponse)
        }
        other => Err(FrameError::UnknownBody(other.0)),
    }
}

fn bad(what: String) -> FrameError {
    FrameError::BadValue(what)
}

fn topic_id(id: Option<&fb::Uuid>) -> Result<u128, FrameError> {
    let id = id
        .map(uuid_from_fb)
        .ok_or(FrameError::Missing("a topic id"))?;
    if id == 0 {
        return Err(bad("the nil topic id".to_string()));
    }
    Ok(id)
}

fn at_least(value: i64, min: i64, field: &str) -> Result<(), FrameError> {
    if value < min {
        return Err(bad(format!("{field} {value} is below {min}")));
    }
    Ok(())
}

fn decode_request(
    correlation_id: i32,
    body: fb::FetchRequest<'_>,
) -> Result<FetchRequest, FrameError> {
    at_least(i64::from(body.replica_id()), 0, "replica id")?;
    at_least(body.broker_epoch(), -1, "broker epoch")?;
    at_least(i64::from(body.max_wait_ms()), 0, "max wait")?;
    at_least(i64::from(body.min_bytes()), 0, "min bytes")?;
    at_least(i64::from(body.max_bytes()), 1, "max bytes")?;
    let list = body
        .partitions()
        .ok_or(FrameError::Missing("its partitions"))?;
    check_partition_count(list.len())?;
    let mut partitions = Vec::with_capacity(list.len());
    let mut seen = HashSet::with_capacity(list.len());
    for p in list.iter() {
        let partition = FetchPartition {
            topic_id: topic_id(p.topic_id())?,
            partition: p.partition(),
            current_leader_epoch: p.current_leader_epoch(),
            fetch_offset: p.fetch_offset(),
            last_fetched_epoch: p.last_fetched_epoch(),
            log_start_offset: p.log_start_offset(),
            max_bytes: p.max_bytes(),
            synced_offset: p.synced_offset(),
        };
        at_least(i64::from(partition.partition), 0, "partition")?;
        at_least(
            i64::from(partition.current_leader_epoch),
            -1,
            "current leader epoch",
        )?;
        at_least(partition.fetch_offset, 0, "fetch offset")?;
        at_least(
            i64::from(partition.last_fetched_epoch),
            -1,
            "last fetched epoch",
        )?;
        at_least(partition.log_start_offset, -1, "log start offset")?;
        at_least(i64::from(partition.max_bytes), 1, "partition max bytes")?;
        at_least(partition.synced_offset, -1, "synced offset")?;
        if partition.synced_offset > partition.fetch_offset {
            return Err(bad(format!(
                "synced offset {} past the fetch offset {}",
                partition.synced_offset, partition.fetch_offset
            )));
        }
        if !seen.insert((partition.topic_id, partition.partition)) {
            return Err(FrameError::Malformed(format!(
                "partition {} of topic {:032x} asked for twice",
                partition.partition, partition.topic_id
            )));
        }
        partitions.push(partition);
    }
    Ok(FetchRequest {
        correlation_id,
        replica_id: body.replica_id(),
        broker_epoch: body.broker_epoch(),
        max_wait_ms: body.max_wait_ms(),
        min_bytes: body.min_bytes(),
        max_bytes: body.max_bytes(),
        partitions,
    })
}

fn decode_response(
    correlation_id: i32,
    body: fb::FetchResponse<'_>,
    payload: Bytes,
) -> Result<FetchResponse, FrameError> {
    let list = body
        .partitions()
        .ok_or(FrameError::Missing("its partitions"))?;
    check_partition_count(list.len())?;
    if body.error_code() != 0 && !list.is_empty() {
        return Err(bad("a request-level error with partitions".to_string()));
    }
    let mut headers = Vec::with_capacity(list.len());
    let mut total: u64 = 0;
    for p in list.iter() {
        let header = PartitionHeader {
            topic_id: topic_id(p.topic_id())?,
            partition: p.partition(),
            error_code: p.error_code(),
            high_watermark: p.high_watermark(),
            last_stable_offset: p.last_stable_offset(),
            log_start_offset: p.log_start_offset(),
            diverging_epoch: p.diverging_epoch().map(|d| EpochEndOffset {
                epoch: d.epoch(),
                end_offset: d.end_offset(),
            }),
            leader_epoch: p.leader_epoch(),
            leader_id: p.leader_id(),
            records_bytes: p.records_bytes(),
        };
        at_least(i64::from(header.partition), 0, "partition")?;
        at_least(header.high_watermark, -1, "high watermark")?;
        at_least(header.last_stable_offset, -1, "last stable offset")?;
        at_least(header.log_start_offset, -1, "log start offset")?;
        at_least(i64::from(header.leader_epoch), -1, "leader epoch")?;
        at_least(i64::from(header.leader_id), -1, "leader id")?;
        if let Some(d) = header.diverging_epoch {
            at_least(i64::from(d.epoch), -1, "diverging epoch")?;
            at_least(d.end_offset, -1, "diverging end offset")?;
        }
        if header.records_bytes > 0 && (header.error_code != 0 || header.diverging_epoch.is_some())
        {
            return Err(bad(format!(
                "partition {} carries records with an error or a diverging epoch",
                header.partition
            )));
        }
        total += u64::from(header.records_bytes);
        headers.push(header);
    }
    if total != payload.len() as u64 {
        return Err(FrameError::Malformed(format!(
            "partitions announce {total} bytes of records, the frame holds {}",
            payload.len()
        )));
    }
    let mut at = 0usize;
    let partitions = headers
        .into_iter()
        .map(|header| {
            let end = at + header.records_bytes as usize;
            let records = payload.slice(at..end);
            at = end;
            PartitionData { header, records }
        })
        .collect();
    Ok(FetchResponse {
        correlation_id,
        error_code: body.error_code(),
        partitions,
    })
}
