//! Property tests of the codec: round trip, prefixes, corruption, and
//! decoding arbitrary bytes.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::codec_tests::frame_with_body;
use super::*;

fn text(chars_max: usize) -> impl Strategy<Value = String> {
    // At most 4 bytes a char, so `chars_max` is a quarter of the byte limit.
    vec(any::<char>(), 0..=chars_max).prop_map(String::from_iter)
}

fn hello() -> impl Strategy<Value = Hello> {
    let role = prop_oneof![Just(Role::Appliance), Just(Role::Tap)];
    let versions = (any::<u16>(), any::<u16>()).prop_map(|(a, b)| (a.min(b), a.max(b)));
    let name = text(HELLO_NAME_BYTES_MAX / 4);
    let software = text(HELLO_SOFTWARE_BYTES_MAX / 4);
    (versions, role, any::<[u8; 16]>(), name, software).prop_map(
        |((version_min, version_max), role, appliance_id, name, software)| Hello {
            version_min,
            version_max,
            role,
            appliance_id,
            name,
            software,
        },
    )
}

fn write_batch() -> impl Strategy<Value = WriteBatch> {
    let record = (
        any::<u32>(),
        1..=u64::from(u32::MAX),
        any::<u64>(),
        vec(any::<u8>(), 0..300),
    );
    (0..u64::MAX / 2, vec(record, 1..8)).prop_map(|(mut sequence, records)| {
        let writes = records
            .into_iter()
            .map(|(disk, step, offset, data)| {
                sequence += step;
                let offset_max = u64::MAX - u64::try_from(data.len()).unwrap();
                WriteRecord {
                    disk,
                    sequence,
                    offset: offset.min(offset_max),
                    data: data.into(),
                }
            })
            .collect();
        WriteBatch { writes }
    })
}

fn trim() -> impl Strategy<Value = Trim> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(disk, sequence, offset, length)| Trim {
            disk,
            sequence,
            offset: offset.min(u64::MAX - length),
            length,
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![0..=9u16, any::<u16>()].prop_map(ErrorCode::from_code)
}

pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        hello().prop_map(Frame::Hello),
        write_batch().prop_map(Frame::Write),
        (any::<u32>(), any::<u64>())
            .prop_map(|(disk, sequence)| Frame::Flush(Flush { disk, sequence })),
        trim().prop_map(Frame::Trim),
        (
            any::<u32>(),
            any::<u64>(),
            text(BOOKMARK_NAME_BYTES_MAX / 4)
        )
            .prop_map(|(group, sequence, name)| Frame::Bookmark(Bookmark {
                group,
                sequence,
                name
            })),
        (any::<u32>(), any::<u64>()).prop_map(|(group, sequence_durable)| Frame::Ack(Ack {
            group,
            sequence_durable
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(sent_unix_ns, echo_unix_ns)| {
            Frame::Heartbeat(Heartbeat {
                sent_unix_ns,
                echo_unix_ns,
            })
        }),
        (error_code(), text(ERROR_MESSAGE_BYTES_MAX / 4))
            .prop_map(|(code, message)| Frame::Error(ErrorFrame { code, message })),
        (any::<u32>(), any::<u64>(), "[a-z0-9._-]{1,60}").prop_map(|(disk, size_bytes, name)| {
            Frame::Attach(Attach {
                disk,
                size_bytes,
                name,
            })
        }),
        (
            any::<u32>(),
            "[a-z0-9._-]{1,40}",
            vec((any::<u32>(), any::<u64>(), "[a-z0-9._-]{1,20}"), 0..4)
        )
            .prop_map(|(group, name, disks)| Frame::Group(GroupInfo {
                group,
                name,
                disks: disks
                    .into_iter()
                    .map(|(disk, size_bytes, name)| GroupDisk {
                        disk,
                        size_bytes,
                        name
                    })
                    .collect(),
            })),
        (
            any::<u32>(),
            any::<u64>(),
            0u64..1000,
            1u32..1000,
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(group, first, span, records, codec, raw_bytes, raw_crc32c, payload)| {
                    Frame::Batch(Batch {
                        group,
                        sequence_first: first.min(u64::MAX - span),
                        sequence_last: first.min(u64::MAX - span) + span,
                        records,
                        codec,
                        raw_bytes,
                        raw_crc32c,
                        payload,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<u32>(),
            12u32..=20,
            any::<u64>(),
            vec((0u64..1000, 1u32..8), 1..6)
        )
            .prop_map(|(request, disk, shift, seed, gaps)| {
                let block_bytes = 1u32 << shift;
                let mut at = 0u64;
                let spans = gaps
                    .into_iter()
                    .map(|(gap, blocks)| {
                        let offset = at + gap * u64::from(block_bytes);
                        at = offset + u64::from(blocks) * u64::from(block_bytes);
                        SumSpan { offset, blocks }
                    })
                    .collect();
                Frame::SumRequest(SumRequest {
                    request,
                    group: 0,
                    disk,
                    disk_bytes: at,
                    block_bytes,
                    seed,
                    spans,
                })
            }),
        (any::<u64>(), vec(any::<u128>(), 0..40)).prop_map(|(request, sums)| Frame::Sums(Sums {
            request,
            error: String::new(),
            sums
        })),
        (
            any::<u64>(),
            any::<u32>(),
            vec((0u64..1 << 20, 1u32..1 << 20), 1..6)
        )
            .prop_map(|(request, disk, gaps)| {
                let mut at = 0u64;
                let ranges = gaps
                    .into_iter()
                    .map(|(gap, length)| {
                        let offset = at + gap;
                        at = offset + u64::from(length);
                        ResyncRange { offset, length }
                    })
                    .collect();
                Frame::Resync(Resync {
                    request,
                    disk,
                    ranges,
                })
            }),
        (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(disk, sequence, done)| {
            Frame::ResyncMark(ResyncMark {
                disk,
                sequence,
                done,
            })
        }),
        (
            any::<u64>(),
            "[a-z0-9-]{1,20}",
            vec(
                ("[a-z0-9-]{1,12}", vec((0u64..1 << 20, 1u64..1 << 20), 0..5)),
                1..4
            )
        )
            .prop_map(|(request, group, disks)| {
                let disks = disks
                    .into_iter()
                    .map(|(name, gaps)| {
                        let mut at = 0u64;
                        let ranges = gaps
                            .into_iter()
                            .map(|(gap, length)| {
                                let offset = at + gap;
                                at = offset + length;
                                (offset, length)
                            })
                            .collect();
                        ReprotectDisk { name, ranges }
                    })
                    .collect();
                Frame::Reprotect(Reprotect {
                    request,
                    group,
                    disks,
                })
            }),
        (any::<u64>(), any::<u32>(), any::<u64>(), "[ -~]{0,40}").prop_map(
            |(request, group, delta_bytes, error)| Frame::Reprotected(Reprotected {
                request,
                group,
                delta_bytes,
                error,
            })
        ),
        (any::<u64>(), "[a-z0-9-]{1,20}", 1u8..=2).prop_map(|(request, group, step)| {
            Frame::Failback(Failback {
                request,
                group,
                step,
            })
        }),
        (any::<u64>(), any::<u64>(), "[ -~]{0,40}").prop_map(|(request, sequence, error)| {
            Frame::FailedBack(FailedBack {
                request,
                sequence,
                error,
            })
        }),
    ]
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes).expect("generated frames respect every limit");
    bytes
}

/// If `bytes` decode, re-encoding the frame gives back exactly the bytes
/// consumed: every frame has one encoding.
fn assert_canonical(bytes: &[u8], max_body_bytes: u32) -> Result<(), TestCaseError> {
    if let Ok((frame, consumed)) = decode(bytes, max_body_bytes) {
        prop_assert!(consumed <= bytes.len());
        prop_assert_eq!(&encoded(&frame)[..], &bytes[..consumed]);
    }
    Ok(())
}

proptest! {
    #[test]
    fn round_trip_consumes_exactly_the_frame(frame in frame(), tail in vec(any::<u8>(), 0..32)) {
        let mut bytes = encoded(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let frame_len = bytes.len();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode(&bytes, BODY_BYTES_DEFAULT), Ok((frame, frame_len)));
    }

    #[test]
    fn every_prefix_is_incomplete(frame in frame()) {
        let bytes = encoded(&frame);
        for length in 0..bytes.len() {
            match decode(&bytes[..length], BODY_BYTES_DEFAULT) {
                Err(DecodeError::Incomplete { needed }) => {
                    prop_assert!(needed >= 1);
                    prop_assert!(length + needed <= bytes.len());
                    if length >= HEADER_BYTES {
                        prop_assert_eq!(length + needed, bytes.len());
                    }
                }
                other => prop_assert!(false, "prefix of {} bytes gave {:?}", length, other),
            }
        }
    }

    #[test]
    fn any_single_byte_change_is_an_error(frame in frame(), index in any::<Index>(), mask in 1..=u8::MAX) {
        let mut bytes = encoded(&frame);
        let index = index.index(bytes.len());
        bytes[index] ^= mask;
        let result = decode(&bytes, BODY_BYTES_LIMIT);
        prop_assert!(result.is_err(), "byte {} ^ {:#04x} still decodes: {:?}", index, mask, result);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in any::<u32>()) {
        assert_canonical(&bytes, max)?;
    }

    /// Past the header and checksum, so the body parsers see garbage.
    #[test]
    fn arbitrary_bodies_never_panic(frame_type in 0..=16u8, body in vec(any::<u8>(), 0..512)) {
        assert_canonical(&frame_with_body(frame_type, &body), BODY_BYTES_DEFAULT)?;
    }

    /// Garbage that starts as a real body: mutations of a valid one.
    #[test]
    fn mutated_bodies_never_panic(frame in frame(), index in any::<Index>(), value in any::<u8>(), cut in any::<Index>()) {
        let bytes = encoded(&frame);
        let mut body = bytes[HEADER_BYTES..].to_vec();
        if !body.is_empty() {
            let index = index.index(body.len());
            body[index] = value;
            body.truncate(cut.index(body.len() + 1));
        }
        assert_canonical(&frame_with_body(bytes[5], &body), BODY_BYTES_DEFAULT)?;
    }

    #[test]
    fn body_over_the_callers_limit_is_refused(frame in frame()) {
        let bytes = encoded(&frame);
        let length = u32::try_from(bytes.len() - HEADER_BYTES).unwrap();
        prop_assume!(length > 0);
        let max = length - 1;
        prop_assert_eq!(decode(&bytes, max), Err(DecodeError::BodyTooLarge { length, max }));
    }
}
