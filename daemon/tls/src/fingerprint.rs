use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// SHA-256 of a certificate's DER encoding: what a peer is pinned by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

/// Crockford base32: no I, L, O, U, so a code read aloud is not misheard.
const PAIRING_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl Fingerprint {
    pub fn of_certificate(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex without separators (64 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The short pairing code: the first 80 bits in Crockford base32, as four
    /// groups of four, for two operators to compare over the phone. It is for
    /// confirmation only; pinning always uses the full fingerprint.
    pub fn pairing_code(&self) -> String {
        let mut bits: u128 = 0;
        for byte in &self.0[..10] {
            bits = (bits << 8) | u128::from(*byte);
        }
        let mut code = String::with_capacity(19);
        for index in 0..16 {
            if index > 0 && index % 4 == 0 {
                code.push('-');
            }
            let shift = 75 - 5 * index;
            let symbol = ((bits >> shift) & 0x1f) as usize;
            code.push(char::from(PAIRING_ALPHABET[symbol]));
        }
        code
    }
}

/// Colon-separated uppercase hex, as `openssl x509 -fingerprint -sha256` prints.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fingerprint must be 64 hex digits (SHA-256), optionally separated by ':'; got {digits} hex digits{extra}")]
pub struct FingerprintParseError {
    digits: usize,
    extra: &'static str,
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    /// Accepts `AB:CD:...`, `abcd...`, and `sha256//AB:CD...` style prefixes
    /// (`sha256:`/`SHA256=`), as operators paste them from other tools.
    fn from_str(text: &str) -> Result<Fingerprint, FingerprintParseError> {
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .or_else(|| trimmed.strip_prefix("sha256 Fingerprint="))
            .or_else(|| trimmed.strip_prefix("SHA256 Fingerprint="))
            .unwrap_or(trimmed);
        let mut nibbles = Vec::with_capacity(64);
        let mut extra = "";
        for character in body.chars() {
            match character.to_digit(16) {
                Some(value) => nibbles.push(value as u8),
                None if character == ':' || character == ' ' => {}
                None => extra = " and characters that are neither hex nor ':'",
            }
        }
        if nibbles.len() != 64 || !extra.is_empty() {
            return Err(FingerprintParseError {
                digits: nibbles.len(),
                extra,
            });
        }
        let mut bytes = [0u8; 32];
        for (index, pair) in nibbles.chunks_exact(2).enumerate() {
            bytes[index] = (pair[0] << 4) | pair[1];
        }
        Ok(Fingerprint(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let fingerprint = Fingerprint::of_certificate(b"certificate bytes");
        let shown = fingerprint.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fingerprint);
        assert_eq!(
            fingerprint.to_hex().parse::<Fingerprint>().unwrap(),
            fingerprint
        );
        let openssl_style = format!("sha256 Fingerprint={shown}");
        assert_eq!(openssl_style.parse::<Fingerprint>().unwrap(), fingerprint);
    }

    #[test]
    fn known_digest() {
        // sha256("abc"), a published test vector.
        let fingerprint = Fingerprint::of_certificate(b"abc");
        assert_eq!(
            fingerprint.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // 0xba7816bf8f01cfea4141 in base32 groups of five bits.
        assert_eq!(fingerprint.pairing_code(), "Q9W1-DFWF-077Y-MGA1");
    }

    #[test]
    fn rejects_bad_input() {
        assert!("".parse::<Fingerprint>().is_err());
        assert!("abcd".parse::<Fingerprint>().is_err());
        let too_long = "a".repeat(66);
        assert!(too_long.parse::<Fingerprint>().is_err());
        let wrong_char = format!("{}g", "a".repeat(63));
        let error = wrong_char.parse::<Fingerprint>().unwrap_err();
        assert!(error.to_string().contains("neither hex"));
    }
}
