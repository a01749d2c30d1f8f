//! Unit tests of the codec: one or more per error variant, golden bytes,
//! and exhaustive single-bit corruption of one frame of each kind.

use super::header;
use super::*;

/// A frame with any header values and a correct checksum over `body`.
pub(crate) fn raw_frame(
    magic: u32,
    format_version: u8,
    frame_type: u8,
    flags: u16,
    body_length: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&magic.to_le_bytes());
    bytes.push(format_version);
    bytes.push(frame_type);
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&body_length.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(body);
    header::seal(&mut bytes, 0);
    bytes
}

/// A well-formed header of type `frame_type` around an arbitrary body.
pub(crate) fn frame_with_body(frame_type: u8, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len()).unwrap();
    raw_frame(MAGIC, FORMAT_VERSION, frame_type, 0, length, body)
}

fn decode_all(bytes: &[u8]) -> Result<Frame, DecodeError> {
    decode(bytes, BODY_BYTES_DEFAULT).map(|(frame, consumed)| {
        assert_eq!(consumed, bytes.len());
        frame
    })
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes).unwrap();
    bytes
}

fn encode_error(frame: &Frame) -> EncodeError {
    let mut bytes = b"prefix".to_vec();
    let error = encode(frame, &mut bytes).unwrap_err();
    assert_eq!(
        bytes, b"prefix",
        "a failed encode must leave the buffer as it was"
    );
    error
}

fn hello(name: &str, software: &str) -> Hello {
    Hello {
        version_min: 1,
        version_max: 1,
        role: Role::Tap,
        appliance_id: [7; 16],
        name: name.to_owned(),
        software: software.to_owned(),
    }
}

fn record(sequence: u64, offset: u64, data: &[u8]) -> WriteRecord {
    WriteRecord {
        disk: 3,
        sequence,
        offset,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

/// One frame of each kind.
pub(crate) fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello(hello("site-a.example", "drgw 0.1.0")),
        Frame::Write(WriteBatch {
            writes: vec![
                record(10, 4096, b"hello"),
                record(11, 0, b""),
                record(12, 512, &[0xAB; 40]),
            ],
        }),
        Frame::Flush(Flush {
            disk: 3,
            sequence: 13,
        }),
        Frame::Trim(Trim {
            disk: 3,
            sequence: 14,
            offset: 1 << 20,
            length: 1 << 16,
        }),
        Frame::Bookmark(Bookmark {
            group: 2,
            sequence: 14,
            name: "pre-upgrade ✓".to_owned(),
        }),
        Frame::Ack(Ack {
            group: 2,
            sequence_durable: 14,
        }),
        Frame::Heartbeat(Heartbeat {
            sent_unix_ns: 1_700_000_000_000_000_000,
            echo_unix_ns: 1_699_999_999_000_000_000,
        }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::NotPaired,
            message: "fingerprint not pinned".to_owned(),
        }),
        Frame::Attach(Attach {
            disk: 1,
            size_bytes: 8 << 30,
            name: "db-01-data".to_owned(),
        }),
        Frame::Group(GroupInfo {
            group: 3,
            name: "shop".to_owned(),
            disks: vec![GroupDisk {
                disk: 1,
                size_bytes: 8 << 30,
                name: "db-01-data".to_owned(),
            }],
        }),
        Frame::Batch(Batch {
            group: 3,
            sequence_first: 10,
            sequence_last: 12,
            records: 3,
            codec: 1,
            raw_bytes: 9000,
            raw_crc32c: 0xdead_beef,
            payload: vec![1, 2, 3, 4],
        }),
        Frame::SumRequest(SumRequest {
            request: 7,
            group: 3,
            disk: 1,
            disk_bytes: 8 << 30,
            block_bytes: 65536,
            seed: 0x1234_5678_9abc_def0,
            spans: vec![
                SumSpan {
                    offset: 0,
                    blocks: 16,
                },
                SumSpan {
                    offset: 1 << 30,
                    blocks: 1,
                },
            ],
        }),
        Frame::Sums(Sums {
            request: 7,
            error: String::new(),
            sums: vec![1, u128::MAX, 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10],
        }),
        Frame::Resync(Resync {
            request: 9,
            disk: 1,
            ranges: vec![
                ResyncRange {
                    offset: 4096,
                    length: 4096,
                },
                ResyncRange {
                    offset: 65536,
                    length: 12288,
                },
            ],
        }),
        Frame::ResyncMark(ResyncMark {
            disk: 1,
            sequence: 15,
            done: true,
        }),
        Frame::Reprotect(Reprotect {
            request: 11,
            group: "group-1".into(),
            disks: vec![
                ReprotectDisk {
                    name: "disk-a".into(),
                    ranges: vec![(0, 4096), (1 << 20, 65536)],
                },
                ReprotectDisk {
                    name: "disk-b".into(),
                    ranges: Vec::new(),
                },
            ],
        }),
        Frame::Reprotected(Reprotected {
            request: 11,
            group: 3,
            delta_bytes: 1 << 30,
            error: String::new(),
        }),
        Frame::Failback(Failback {
            request: 12,
            group: "group-1".into(),
            step: FAILBACK_QUIESCE,
        }),
        Frame::FailedBack(FailedBack {
            request: 12,
            sequence: 77,
            error: String::new(),
        }),
    ]
}

#[test]
fn reprotect_refuses_bad_ranges_and_names() {
    let with = |disks: Vec<ReprotectDisk>| {
        Frame::Reprotect(Reprotect {
            request: 1,
            group: "g".into(),
            disks,
        })
    };
    let disk = |ranges: Vec<(u64, u64)>| ReprotectDisk {
        name: "d".into(),
        ranges,
    };
    for (frame, field) in [
        (with(vec![disk(vec![(0, 0)])]), "reprotect.range.length"),
        (
            with(vec![disk(vec![(8192, 4096), (0, 4096)])]),
            "reprotect.range.offset",
        ),
        (
            with(vec![disk(vec![(0, 8192), (4096, 4096)])]),
            "reprotect.range.offset",
        ),
        (with(vec![disk(vec![(u64::MAX, 2)])]), "reprotect.range"),
        (with(Vec::new()), "reprotect.disks"),
        (
            with(vec![ReprotectDisk {
                name: String::new(),
                ranges: Vec::new(),
            }]),
            "reprotect.disk.name",
        ),
    ] {
        match encode_error(&frame) {
            EncodeError::Invalid { field: got, .. } => assert_eq!(got, field, "{frame:?}"),
            other => panic!("{frame:?}: {other:?}"),
        }
    }
    // The decoder refuses the same: a valid frame with its ranges swapped.
    let good = with(vec![disk(vec![(0, 4096), (8192, 4096)])]);
    let mut body = encoded(&good)[HEADER_BYTES..].to_vec();
    // request 8, group 2+1, count 2, name 2+1, ranges 4: then the ranges.
    let first = 8 + 3 + 2 + 3 + 4;
    let (a, b) = body[first..first + 32].split_at_mut(16);
    a.swap_with_slice(b);
    let bytes = frame_with_body(FrameKind::Reprotect.code(), &body);
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::Invalid {
            field: "reprotect.range.offset",
            reason: "ranges overlap or are not sorted"
        })
    );
}

#[test]
fn golden_heartbeat_bytes() {
    let frame = Frame::Heartbeat(Heartbeat {
        sent_unix_ns: 0x0102_0304_0506_0708,
        echo_unix_ns: 0,
    });
    let expected: [u8; 32] = [
        b'D', b'R', b'G', b'W', 0x01, 0x07, 0x00, 0x00, 0x10, 0x00, 0x00,
        0x00, // header 0..12
        0xDD, 0xCE, 0xB7, 0xC4, // checksum
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let bytes = encoded(&frame);
    assert_eq!(bytes, expected);
    assert_eq!(bytes[12..16], GOLDEN_HEARTBEAT_CHECKSUM.to_le_bytes());
    assert_eq!(decode_all(&bytes), Ok(frame));
}

/// CRC32C of the golden HEARTBEAT (also in docs/wire-protocol.md).
const GOLDEN_HEARTBEAT_CHECKSUM: u32 = 0xC4B7_CEDD;

#[test]
fn samples_round_trip_with_exact_length() {
    for frame in samples() {
        let bytes = encoded(&frame);
        assert_eq!(bytes.len(), frame.encoded_len(), "{}", frame.kind());
        assert_eq!(decode_all(&bytes), Ok(frame));
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for frame in samples() {
        let bytes = encoded(&frame);
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= 1 << bit;
                let result = decode(&corrupt, BODY_BYTES_LIMIT);
                assert!(
                    result.is_err(),
                    "{} byte {index} bit {bit}: {result:?}",
                    frame.kind()
                );
            }
        }
    }
}

#[test]
fn magic_is_drgw_on_the_wire() {
    assert_eq!(MAGIC.to_le_bytes(), *b"DRGW");
    assert_eq!(MAGIC, 0x5747_5244);
}

#[test]
fn incomplete_reports_bytes_still_needed() {
    let bytes = encoded(&samples()[0]);
    let missing = |length: usize| decode(&bytes[..length], BODY_BYTES_DEFAULT);
    assert_eq!(
        missing(0),
        Err(DecodeError::Incomplete {
            needed: HEADER_BYTES
        })
    );
    assert_eq!(missing(10), Err(DecodeError::Incomplete { needed: 6 }));
    let needed = bytes.len() - HEADER_BYTES;
    assert_eq!(
        missing(HEADER_BYTES),
        Err(DecodeError::Incomplete { needed })
    );
    let last = bytes.len() - 1;
    assert_eq!(missing(last), Err(DecodeError::Incomplete { needed: 1 }));
}

#[test]
fn bad_magic() {
    // The other byte order of "DRGW" is not the magic.
    let bytes = raw_frame(0x4452_4757, FORMAT_VERSION, 7, 0, 16, &[0; 16]);
    let expected = DecodeError::BadMagic { found: 0x4452_4757 };
    assert_eq!(decode_all(&bytes), Err(expected.clone()));
    assert_eq!(expected.error_code(), ErrorCode::Malformed);
    assert!(expected.to_string().contains("0x44524757"), "{expected}");
}

#[test]
fn unsupported_format_version() {
    for found in [0, 2, 255] {
        let bytes = raw_frame(MAGIC, found, 7, 0, 16, &[0; 16]);
        let error = decode_all(&bytes).unwrap_err();
        let supported = FORMAT_VERSION;
        assert_eq!(
            error,
            DecodeError::UnsupportedFormatVersion { found, supported }
        );
        assert_eq!(error.error_code(), ErrorCode::UnsupportedVersion);
    }
}

#[test]
fn reserved_flags() {
    for found in [1, 0x8000] {
        let bytes = raw_frame(MAGIC, FORMAT_VERSION, 7, found, 16, &[0; 16]);
        assert_eq!(
            decode_all(&bytes),
            Err(DecodeError::ReservedFlags { found })
        );
    }
}

#[test]
fn body_too_large_is_checked_on_the_header_alone() {
    // Only the header is present: the length is refused without waiting for the body.
    let bytes = raw_frame(MAGIC, FORMAT_VERSION, 2, 0, 1025, &[]);
    let error = decode(&bytes, 1024).unwrap_err();
    assert_eq!(
        error,
        DecodeError::BodyTooLarge {
            length: 1025,
            max: 1024
        }
    );
    assert_eq!(error.error_code(), ErrorCode::FrameTooLarge);
    // The caller's limit cannot raise the hard ceiling.
    let length = BODY_BYTES_LIMIT + 1;
    let bytes = raw_frame(MAGIC, FORMAT_VERSION, 2, 0, length, &[]);
    let max = BODY_BYTES_LIMIT;
    assert_eq!(
        decode(&bytes, u32::MAX),
        Err(DecodeError::BodyTooLarge { length, max })
    );
}

#[test]
fn body_limit_is_inclusive() {
    let frame = samples()[1].clone();
    let bytes = encoded(&frame);
    let body = u32::try_from(bytes.len() - HEADER_BYTES).unwrap();
    assert_eq!(decode(&bytes, body).map(|(frame, _)| frame), Ok(frame));
    let expected = DecodeError::BodyTooLarge {
        length: body,
        max: body - 1,
    };
    assert_eq!(decode(&bytes, body - 1), Err(expected));
}

#[test]
fn checksum_mismatch() {
    let mut bytes = encoded(&samples()[5]);
    let expected = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    bytes[12] ^= 0xFF;
    match decode_all(&bytes) {
        Err(DecodeError::Checksum {
            expected: found,
            computed,
        }) => {
            assert_eq!(computed, expected);
            assert_eq!(found, expected ^ 0xFF);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[test]
fn frame_type_is_covered_by_the_checksum() {
    // FLUSH and ACK bodies have the same size: only the checksum tells them apart.
    let mut bytes = encoded(&Frame::Flush(Flush {
        disk: 1,
        sequence: 2,
    }));
    bytes[5] = FrameKind::Ack.code();
    assert!(matches!(
        decode_all(&bytes),
        Err(DecodeError::Checksum { .. })
    ));
}

#[test]
fn unknown_frame_type() {
    for code in [0, 20, 255] {
        let bytes = frame_with_body(code, &[]);
        assert_eq!(
            decode_all(&bytes),
            Err(DecodeError::UnknownFrameType { code })
        );
    }
}

fn hello_body(version_min: u16, version_max: u16, role: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version_min.to_le_bytes());
    body.extend_from_slice(&version_max.to_le_bytes());
    body.push(role);
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&[0, 0, 0, 0]); // two empty strings
    body
}

#[test]
fn unknown_role() {
    assert!(decode_all(&frame_with_body(1, &hello_body(1, 1, 1))).is_ok());
    for code in [0, 3] {
        let bytes = frame_with_body(1, &hello_body(1, 1, code));
        assert_eq!(decode_all(&bytes), Err(DecodeError::UnknownRole { code }));
    }
}

#[test]
fn inverted_version_range() {
    let bytes = frame_with_body(1, &hello_body(3, 2, 1));
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::VersionRange { min: 3, max: 2 })
    );
    let mut inverted = hello("a", "b");
    inverted.version_min = 3;
    inverted.version_max = 2;
    let error = encode_error(&Frame::Hello(inverted));
    assert_eq!(error, EncodeError::VersionRange { min: 3, max: 2 });
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    let offer = |version_min, version_max| Hello {
        version_min,
        version_max,
        ..hello("a", "b")
    };
    assert_eq!(offer(1, 1).negotiate(), Some(1));
    assert_eq!(offer(0, 9).negotiate(), Some(PROTOCOL_VERSION_MAX));
    assert_eq!(offer(2, 9).negotiate(), None);
    assert_eq!(offer(0, 0).negotiate(), None);
}

#[test]
fn truncated_body_names_the_field() {
    let bytes = frame_with_body(FrameKind::Flush.code(), &[0; 11]);
    let expected = DecodeError::Truncated {
        field: "flush.sequence",
        needed: 8,
        remaining: 7,
    };
    assert_eq!(decode_all(&bytes), Err(expected));
}

#[test]
fn trailing_bytes_after_body() {
    let bytes = frame_with_body(FrameKind::Ack.code(), &[0; 13]);
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

type MakeFrame = fn(String) -> Frame;

#[test]
fn string_limits_are_inclusive_on_both_sides() {
    // (field, limit, body offset of its length prefix, frame with that string)
    let limits: [(&str, usize, usize, MakeFrame); 4] = [
        ("hello.name", HELLO_NAME_BYTES_MAX, 21, |text| {
            Frame::Hello(hello(&text, ""))
        }),
        ("hello.software", HELLO_SOFTWARE_BYTES_MAX, 23, |text| {
            Frame::Hello(hello("", &text))
        }),
        ("bookmark.name", BOOKMARK_NAME_BYTES_MAX, 12, |name| {
            Frame::Bookmark(Bookmark {
                group: 1,
                sequence: 2,
                name,
            })
        }),
        ("error.message", ERROR_MESSAGE_BYTES_MAX, 2, |message| {
            Frame::Error(ErrorFrame {
                code: ErrorCode::Internal,
                message,
            })
        }),
    ];
    for (field, max, prefix, make) in limits {
        let at_limit = make("x".repeat(max));
        let bytes = encoded(&at_limit);
        assert_eq!(decode_all(&bytes), Ok(at_limit));
        let length = max + 1;
        let expected = EncodeError::StringTooLong { field, length, max };
        assert_eq!(encode_error(&make("x".repeat(length))), expected);
        // Forge one more byte on the wire: raise the length prefix and insert a byte.
        let mut body = bytes[HEADER_BYTES..].to_vec();
        let at = prefix + 2;
        assert_eq!(body[prefix..at], u16::try_from(max).unwrap().to_le_bytes());
        body[prefix..at].copy_from_slice(&u16::try_from(length).unwrap().to_le_bytes());
        body.insert(at, b'x');
        let expected = DecodeError::StringTooLong { field, length, max };
        assert_eq!(decode_all(&frame_with_body(bytes[5], &body)), Err(expected));
    }
}

#[test]
fn invalid_utf8() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&[0xC3, 0x28]);
    let bytes = frame_with_body(FrameKind::Bookmark.code(), &body);
    let field = "bookmark.name";
    assert_eq!(decode_all(&bytes), Err(DecodeError::InvalidUtf8 { field }));
}

fn write_body(count: u32, records: &[(u64, u64, &[u8])]) -> Vec<u8> {
    let mut body = count.to_le_bytes().to_vec();
    for (sequence, offset, data) in records {
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&sequence.to_le_bytes());
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        body.extend_from_slice(data);
    }
    body
}

#[test]
fn empty_write_batch_is_refused() {
    let bytes = frame_with_body(FrameKind::Write.code(), &write_body(0, &[]));
    assert_eq!(decode_all(&bytes), Err(DecodeError::EmptyWriteBatch));
    let empty = Frame::Write(WriteBatch { writes: Vec::new() });
    assert_eq!(encode_error(&empty), EncodeError::EmptyWriteBatch);
}

#[test]
fn record_count_beyond_body_room() {
    let body = write_body(u32::MAX, &[(1, 0, b"abc")]);
    let bytes = frame_with_body(FrameKind::Write.code(), &body);
    let expected = DecodeError::RecordCountTooLarge {
        count: u32::MAX,
        max: 1,
    };
    assert_eq!(decode_all(&bytes), Err(expected));
}

#[test]
fn sequences_must_strictly_increase() {
    for (previous, found) in [(5, 5), (5, 4)] {
        let body = write_body(2, &[(previous, 0, b"a"), (found, 1, b"b")]);
        let bytes = frame_with_body(FrameKind::Write.code(), &body);
        let expected = DecodeError::SequenceNotIncreasing { previous, found };
        assert_eq!(decode_all(&bytes), Err(expected));
        let batch = WriteBatch {
            writes: vec![record(previous, 0, b"a"), record(found, 1, b"b")],
        };
        let expected = EncodeError::SequenceNotIncreasing { previous, found };
        assert_eq!(encode_error(&Frame::Write(batch)), expected);
    }
}

#[test]
fn ranges_must_not_overflow() {
    let (offset, length) = (u64::MAX - 1, 2);
    let body = write_body(1, &[(1, offset, b"ab")]);
    let bytes = frame_with_body(FrameKind::Write.code(), &body);
    assert_eq!(
        decode_all(&bytes),
        Err(DecodeError::OffsetOverflow { offset, length })
    );
    let batch = WriteBatch {
        writes: vec![record(1, offset, b"ab")],
    };
    let expected = EncodeError::OffsetOverflow { offset, length };
    assert_eq!(encode_error(&Frame::Write(batch)), expected);

    let trim = |offset, length| {
        Frame::Trim(Trim {
            disk: 1,
            sequence: 1,
            offset,
            length,
        })
    };
    let expected = EncodeError::OffsetOverflow {
        offset: 1,
        length: u64::MAX,
    };
    assert_eq!(encode_error(&trim(1, u64::MAX)), expected);
    let mut bytes = encoded(&trim(0, u64::MAX));
    assert_eq!(decode_all(&bytes), Ok(trim(0, u64::MAX)));
    bytes[HEADER_BYTES + 12] = 1; // offset 0 -> 1
    let body = bytes[HEADER_BYTES..].to_vec();
    let bytes = frame_with_body(FrameKind::Trim.code(), &body);
    let expected = DecodeError::OffsetOverflow {
        offset: 1,
        length: u64::MAX,
    };
    assert_eq!(decode_all(&bytes), Err(expected));
}

#[test]
fn body_over_the_hard_limit_does_not_encode() {
    let data = vec![0u8; usize::try_from(BODY_BYTES_LIMIT).unwrap()];
    let batch = WriteBatch {
        writes: vec![record(1, 0, &data)],
    };
    let length = data.len() + 4 + WRITE_RECORD_HEADER_BYTES;
    let expected = EncodeError::BodyTooLarge {
        length,
        max: BODY_BYTES_LIMIT,
    };
    assert_eq!(encode_error(&Frame::Write(batch)), expected);
}

#[test]
fn error_codes_round_trip_and_unknown_codes_survive() {
    for code in 0..=9u16 {
        let frame = Frame::Error(ErrorFrame {
            code: ErrorCode::from_code(code),
            message: String::new(),
        });
        assert_eq!(decode_all(&encoded(&frame)), Ok(frame));
    }
    assert_eq!(ErrorCode::from_code(1), ErrorCode::Malformed);
    assert_eq!(ErrorCode::from_code(7), ErrorCode::ShuttingDown);
    assert_eq!(ErrorCode::from_code(999), ErrorCode::Unknown(999));
    let alias = Frame::Error(ErrorFrame {
        code: ErrorCode::Unknown(3),
        message: String::new(),
    });
    assert_eq!(
        encode_error(&alias),
        EncodeError::ErrorCodeNotCanonical { code: 3 }
    );
}

#[test]
fn frame_kinds_have_codes_and_names() {
    for (index, kind) in FrameKind::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(kind.code()), index + 1);
        assert_eq!(FrameKind::from_code(kind.code()), Some(kind));
    }
    assert_eq!(FrameKind::from_code(0), None);
    assert_eq!(FrameKind::Heartbeat.to_string(), "HEARTBEAT");
    let kinds: Vec<FrameKind> = samples().iter().map(Frame::kind).collect();
    assert_eq!(kinds, FrameKind::ALL);
}

#[test]
fn attach_round_trips_and_refuses_an_empty_name() {
    let frame = Frame::Attach(Attach {
        disk: 3,
        size_bytes: 16 << 30,
        name: "web-01-root".into(),
    });
    let mut bytes = Vec::new();
    encode(&frame, &mut bytes).unwrap();
    assert_eq!(
        decode(&bytes, BODY_BYTES_DEFAULT).unwrap(),
        (frame, bytes.len())
    );

    let empty = Frame::Attach(Attach {
        disk: 3,
        size_bytes: 1,
        name: String::new(),
    });
    let mut out = Vec::new();
    assert_eq!(
        encode(&empty, &mut out),
        Err(EncodeError::EmptyName {
            field: "attach.name"
        })
    );
    assert!(out.is_empty());
    let mut body = Vec::new();
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    let bytes = frame_with_body(FrameKind::Attach.code(), &body);
    assert_eq!(
        decode(&bytes, BODY_BYTES_DEFAULT),
        Err(DecodeError::EmptyName {
            field: "attach.name"
        })
    );
}

#[test]
fn not_protected_error_code_is_named() {
    assert_eq!(ErrorCode::from_code(8), ErrorCode::NotProtected);
    assert_eq!(ErrorCode::NotProtected.code(), 8);
}

#[test]
fn resync_frames_refuse_what_they_cannot_mean() {
    let request = |block_bytes: u32, spans: Vec<SumSpan>| {
        Frame::SumRequest(SumRequest {
            request: 1,
            group: 0,
            disk: 0,
            disk_bytes: 1 << 30,
            block_bytes,
            seed: 0,
            spans,
        })
    };
    let span = |offset: u64, blocks: u32| SumSpan { offset, blocks };
    let refused = [
        (request(4096, vec![]), "sum_request.spans"),
        (request(3000, vec![span(0, 1)]), "sum_request.block_bytes"),
        (request(256, vec![span(0, 1)]), "sum_request.block_bytes"),
        (request(4096, vec![span(512, 1)]), "sum_request.span.offset"),
        (request(4096, vec![span(0, 0)]), "sum_request.span.blocks"),
        (
            request(4096, vec![span(8192, 1), span(0, 1)]),
            "sum_request.span.offset",
        ),
        (request(4096, vec![span(0, 2049)]), "sum_request.spans"),
        (
            request(4096, vec![span(u64::MAX - 4095, 2)]),
            "sum_request.span",
        ),
        (
            Frame::Sums(Sums {
                request: 1,
                error: "no such disk".into(),
                sums: vec![1],
            }),
            "sums.count",
        ),
        (
            Frame::Resync(Resync {
                request: 1,
                disk: 0,
                ranges: vec![],
            }),
            "resync.count",
        ),
        (
            Frame::Resync(Resync {
                request: 1,
                disk: 0,
                ranges: vec![
                    ResyncRange {
                        offset: 0,
                        length: 8192,
                    },
                    ResyncRange {
                        offset: 4096,
                        length: 4096,
                    },
                ],
            }),
            "resync.range.offset",
        ),
    ];
    for (frame, field) in refused {
        match encode_error(&frame) {
            EncodeError::Invalid { field: found, .. } => assert_eq!(found, field, "{frame:?}"),
            other => panic!("{frame:?}: {other}"),
        }
    }
    // The decoder refuses the same body: a valid one with the block size
    // changed in place.
    let mut body = encoded(&request(4096, vec![span(0, 1)]))[HEADER_BYTES..].to_vec();
    body[24..28].copy_from_slice(&3000u32.to_le_bytes());
    assert!(matches!(
        decode_all(&frame_with_body(FrameKind::SumRequest.code(), &body)),
        Err(DecodeError::Invalid {
            field: "sum_request.block_bytes",
            ..
        })
    ));
}

#[test]
fn failback_refuses_an_unknown_step() {
    let frame = Frame::Failback(Failback {
        request: 1,
        group: "g".into(),
        step: 3,
    });
    assert!(matches!(
        encode_error(&frame),
        EncodeError::Invalid {
            field: "failback.step",
            ..
        }
    ));
    let good = Frame::Failback(Failback {
        request: 1,
        group: "g".into(),
        step: FAILBACK_RETURN,
    });
    let mut body = encoded(&good)[HEADER_BYTES..].to_vec();
    *body.last_mut().unwrap() = 0;
    assert!(matches!(
        decode_all(&frame_with_body(FrameKind::Failback.code(), &body)),
        Err(DecodeError::Invalid {
            field: "failback.step",
            ..
        })
    ));
}
