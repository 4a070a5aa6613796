//! ListOffsets v0: the pre-KIP-79 form that Burrow 1.2 and 0.8/0.9-era clients send. Each
//! partition asks for up to `max_num_offsets` offsets at or before a timestamp (-1 latest,
//! -2 earliest) and gets them as an array, newest first, without timestamps. Its shape
//! differs from v1+ (an array of offsets in place of one offset and timestamp), so it has
//! its own types rather than `kafka-protocol`'s.

use bytes::{Bytes, BytesMut};

use super::{LegacyError, Reader, Writer};

/// One partition of a ListOffsets v0 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionQuery {
    pub partition_index: i32,
    pub timestamp: i64,
    pub max_num_offsets: i32,
}

/// A ListOffsets v0 request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsV0Request {
    pub replica_id: i32,
    /// Topic name and its partitions, in request order.
    pub topics: Vec<(String, Vec<PartitionQuery>)>,
}

/// One partition of a ListOffsets v0 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition_index: i32,
    pub error_code: i16,
    /// Newest first.
    pub offsets: Vec<i64>,
}

/// A ListOffsets v0 response: topic name and its partitions, in request order.
pub type ListOffsetsV0Response = Vec<(String, Vec<PartitionOffsets>)>;

/// Smallest encodings: topic = name length + partition count; partition = index +
/// timestamp + max offsets.
const MIN_TOPIC_BYTES: usize = 6;
const MIN_PARTITION_BYTES: usize = 16;

/// Decodes a ListOffsets v0 request body.
pub fn decode_v0(body: &mut Bytes) -> Result<ListOffsetsV0Request, LegacyError> {
    let mut r = Reader::new(body);
    let replica_id = r.i32()?;
    let topics = r.array_len(MIN_TOPIC_BYTES)?;
    let topics = r.elements(topics, |r| {
        let name = r.string()?.to_string();
        let partitions = r.array_len(MIN_PARTITION_BYTES)?;
        let partitions = r.elements(partitions, |r| {
            Ok(PartitionQuery {
                partition_index: r.i32()?,
                timestamp: r.i64()?,
                max_num_offsets: r.i32()?,
            })
        })?;
        Ok((name, partitions))
    })?;
    Ok(ListOffsetsV0Request { replica_id, topics })
}

/// Encodes a ListOffsets v0 response body.
pub fn encode_v0(response: &ListOffsetsV0Response, out: &mut BytesMut) -> Result<(), LegacyError> {
    let mut w = Writer::new(out);
    w.array_len(response.len())?;
    for (name, partitions) in response {
        w.string(name)?;
        w.array_len(partitions.len())?;
        for p in partitions {
            w.i32(p.partition_index);
            w.i16(p.error_code);
            w.array_len(p.offsets.len())?;
            for offset in &p.offsets {
                w.i64(*offset);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_and_response_round_the_wire() {
        let mut body = Out::new()
            .i32(-1)
            .i32(1)
            .str("events")
            .i32(2)
            .i32(0)
            .i64(-1)
            .i32(1)
            .i32(1)
            .i64(-2)
            .i32(5)
            .freeze();
        let req = decode_v0(&mut body).expect("decodes");
        assert_eq!(req.replica_id, -1);
        assert_eq!(
            req.topics,
            vec![(
                "events".to_string(),
                vec![
                    PartitionQuery {
                        partition_index: 0,
                        timestamp: -1,
                        max_num_offsets: 1
                    },
                    PartitionQuery {
                        partition_index: 1,
                        timestamp: -2,
                        max_num_offsets: 5
                    },
                ]
            )]
        );
        let response = vec![(
            "events".to_string(),
            vec![PartitionOffsets {
                partition_index: 0,
                error_code: 0,
                offsets: vec![42, 0],
            }],
        )];
        let mut out = BytesMut::new();
        encode_v0(&response, &mut out).expect("encodes");
        let expect = Out::new()
            .i32(1)
            .str("events")
            .i32(1)
            .i32(0)
            .i16(0)
            .i32(2)
            .i64(42)
            .i64(0);
        assert_eq!(out.freeze(), expect.freeze());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_v0(&mut Bytes::from(data));
        }
    }
}
