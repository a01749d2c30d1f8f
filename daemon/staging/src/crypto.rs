//! Encryption at rest: AES-256-GCM per record payload.
//!
//! The caller's key is never used directly: each log derives its own key from
//! (group, log id) so that two logs sharing a key, or a log re-created in a
//! wiped directory, never share a (key, nonce) pair. Nonces are segment number
//! ‖ sequence; see docs/formats/staging.md for why they never repeat.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::cipher::consts::U16;
use aes_gcm::aes::cipher::BlockEncrypt;
use aes_gcm::aes::Aes256;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::record::TAG_BYTES;

pub struct Sealer {
    cipher: Aes256Gcm,
    key_check: u64,
}

impl Sealer {
    /// Derives the log key: AES-256(master) applied to two distinct blocks naming
    /// the log (a PRF in counter mode), then a key-check value from the log key.
    pub fn for_log(master_key: &[u8; 32], group: u32, log_id: u64) -> Sealer {
        let master = Aes256::new(GenericArray::from_slice(master_key));
        let mut log_key = [0u8; 32];
        for (half, out) in log_key.chunks_mut(16).enumerate() {
            let mut block = derivation_block(b"stg", group, log_id, half as u8);
            master.encrypt_block(&mut block);
            out.copy_from_slice(&block);
        }
        let derived = Aes256::new(GenericArray::from_slice(&log_key));
        let mut check = derivation_block(b"kcv", group, log_id, 0);
        derived.encrypt_block(&mut check);
        let key_check = u64::from_le_bytes(check[..8].try_into().unwrap());
        Sealer {
            cipher: Aes256Gcm::new(GenericArray::from_slice(&log_key)),
            key_check,
        }
    }

    /// A value stored in segment headers so a wrong key is named as such, not as corruption.
    pub fn key_check(&self) -> u64 {
        self.key_check
    }

    /// Encrypts `payload` in place; returns the tag. `aad` is the record header.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], payload: &mut [u8]) -> [u8; TAG_BYTES] {
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, payload)
            .expect("AES-GCM payload within limits");
        tag.into()
    }

    /// Authenticates and decrypts `payload` (ciphertext ‖ tag); None if it fails.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
        let split = payload.len().checked_sub(TAG_BYTES)?;
        let mut plain = payload[..split].to_vec();
        let tag = Tag::from_slice(&payload[split..]);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut plain, tag)
            .ok()?;
        Some(plain)
    }
}

/// One 16-byte PRF input: group ‖ log id ‖ label ‖ counter, injective in all four.
fn derivation_block(
    label: &[u8; 3],
    group: u32,
    log_id: u64,
    counter: u8,
) -> GenericArray<u8, U16> {
    let mut block = [0u8; 16];
    block[..4].copy_from_slice(&group.to_le_bytes());
    block[4..12].copy_from_slice(&log_id.to_le_bytes());
    block[12..15].copy_from_slice(label);
    block[15] = counter;
    GenericArray::from(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_log_and_tamper_is_caught() {
        let a = Sealer::for_log(&[1; 32], 1, 42);
        let b = Sealer::for_log(&[1; 32], 2, 42);
        let c = Sealer::for_log(&[1; 32], 1, 43);
        assert_ne!(a.key_check(), b.key_check());
        assert_ne!(a.key_check(), c.key_check());
        let nonce = [3u8; 12];
        let mut payload = b"hello world".to_vec();
        let tag = a.seal(&nonce, b"hdr", &mut payload);
        payload.extend_from_slice(&tag);
        assert_eq!(a.open(&nonce, b"hdr", &payload).unwrap(), b"hello world");
        assert!(b.open(&nonce, b"hdr", &payload).is_none());
        assert!(a.open(&nonce, b"hdX", &payload).is_none());
        payload[0] ^= 1;
        assert!(a.open(&nonce, b"hdr", &payload).is_none());
    }
}
