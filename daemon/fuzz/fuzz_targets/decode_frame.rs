//! Fuzzes the wire decoder: it must never panic, and whatever it accepts
//! must re-encode to the bytes it consumed and decode again to the same frame.
//! BATCH payloads (decompression and record parsing) must never panic either.
//!
//! Random bytes almost never carry a valid CRC32C, so each input is decoded
//! twice: as given (header and checksum checks), and with its checksum
//! recomputed (so the body parsers see the mutations too).

#![no_main]

use drgw_wire::{decode, encode, BODY_BYTES_DEFAULT, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The BATCH payload parser sees raw bytes too (never panics, whatever they say).
    let _ = drgw_batch::decode_records(&data.to_vec().into(), 0, u64::MAX, 1);
    check(data);
    if let Some(sealed) = with_valid_checksum(data) {
        check(&sealed);
    }
});

fn check(data: &[u8]) {
    let Ok((frame, consumed)) = decode(data, BODY_BYTES_DEFAULT) else {
        return;
    };
    if let drgw_wire::Frame::Batch(batch) = &frame {
        let _ = drgw_batch::open_batch(batch);
    }
    let mut encoded = Vec::new();
    encode(&frame, &mut encoded).expect("a decoded frame re-encodes");
    assert_eq!(encoded, data[..consumed], "one encoding per frame");
    let (again, again_consumed) =
        decode(&encoded, BODY_BYTES_DEFAULT).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);
    assert_eq!(again_consumed, encoded.len());
}

/// `data` with the header's CRC32C set to match the bytes after the header
/// (as much body as the declared length covers, as the decoder reads it).
fn with_valid_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let header = data.get(..HEADER_BYTES)?;
    let length_field: [u8; 4] = header.get(8..12)?.try_into().ok()?;
    let body_length = usize::try_from(u32::from_le_bytes(length_field)).ok()?;
    let body_end = HEADER_BYTES.checked_add(body_length)?;
    let body = data.get(HEADER_BYTES..body_end.min(data.len()))?;
    let header_covered = header.get(..12)?;
    let checksum = crc32c_append(crc32c_append(0, header_covered), body);
    let mut sealed = data.to_vec();
    sealed
        .get_mut(12..16)?
        .copy_from_slice(&checksum.to_le_bytes());
    Some(sealed)
}

/// Bitwise CRC32C (Castagnoli, reflected 0x82F63B78), kept here so the fuzz
/// crate needs no dependency beyond drgw; an independent check of the
/// crate's checksum as a bonus.
fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}
