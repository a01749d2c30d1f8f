//! Bounds-checked little-endian reader over a byte slice (`drgw_io::le`).
//! Every read either returns the value or `DecodeError::Truncated` naming the
//! field; nothing here can panic or read past the slice.

use super::error::DecodeError;
use drgw_io::le::{LeReader, Truncated};

impl From<Truncated> for DecodeError {
    fn from(short: Truncated) -> DecodeError {
        DecodeError::Truncated {
            field: short.field,
            needed: short.needed,
            remaining: short.remaining,
        }
    }
}

/// The wire's reader: `drgw_io::le::LeReader` with the wire's errors, its
/// strings, and slices of a shared buffer.
pub(crate) struct Reader<'a> {
    inner: LeReader<'a>,
    /// The whole of what is read, when it is shared: then
    /// [`Reader::shared_bytes`] slices it instead of copying.
    shared: Option<&'a bytes::Bytes>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            inner: LeReader::new(bytes),
            shared: None,
        }
    }

    pub(crate) fn over_shared(bytes: &'a bytes::Bytes) -> Reader<'a> {
        Reader {
            inner: LeReader::new(bytes),
            shared: Some(bytes),
        }
    }

    /// `bytes`, as an owned buffer: a slice of the shared whole (no copy)
    /// when there is one, else a copy.
    pub(crate) fn shared_bytes(
        &mut self,
        field: &'static str,
        length: usize,
    ) -> Result<bytes::Bytes, DecodeError> {
        let start = self
            .shared
            .map(|whole| whole.len() - self.inner.remaining());
        let head = self.bytes(field, length)?;
        Ok(match (self.shared, start) {
            (Some(whole), Some(start)) => whole.slice(start..start + length),
            _ => bytes::Bytes::copy_from_slice(head),
        })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    pub(crate) fn bytes(
        &mut self,
        field: &'static str,
        length: usize,
    ) -> Result<&'a [u8], DecodeError> {
        Ok(self.inner.bytes(field, length)?)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        Ok(self.inner.array::<N>(field)?)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.inner.u8(field)?)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(self.inner.u16(field)?)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(self.inner.u32(field)?)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(self.inner.u64(field)?)
    }

    /// A u16 length then that many bytes of UTF-8. The length is checked
    /// against `max` before the bytes are looked at.
    pub(crate) fn string(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, DecodeError> {
        let length = usize::from(self.u16(field)?);
        if length > max {
            return Err(DecodeError::StringTooLong { field, length, max });
        }
        let bytes = self.bytes(field, length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        Ok(text.to_owned())
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.inner.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_in_order() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8("a"), Ok(1));
        assert_eq!(reader.u16("b"), Ok(2));
        assert_eq!(reader.u32("c"), Ok(3));
        assert_eq!(reader.u64("d"), Ok(4));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn short_read_names_field_and_consumes_nothing() {
        let bytes = [1, 2, 3];
        let mut reader = Reader::new(&bytes);
        let expected = DecodeError::Truncated {
            field: "x",
            needed: 4,
            remaining: 3,
        };
        assert_eq!(reader.u32("x"), Err(expected));
        assert_eq!(reader.remaining(), 3);
        assert!(matches!(
            reader.bytes("y", usize::MAX),
            Err(DecodeError::Truncated {
                needed: usize::MAX,
                ..
            })
        ));
        assert_eq!(reader.bytes("y", 3), Ok(&bytes[..]));
    }

    #[test]
    fn string_limit_is_checked_before_the_bytes() {
        // Declares 300 bytes but carries none: the limit error wins.
        let bytes = 300u16.to_le_bytes();
        let mut reader = Reader::new(&bytes);
        let expected = DecodeError::StringTooLong {
            field: "s",
            length: 300,
            max: 255,
        };
        assert_eq!(reader.string("s", 255), Err(expected));
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let reader = Reader::new(&[0, 0]);
        assert_eq!(
            reader.finish(),
            Err(DecodeError::TrailingBytes { count: 2 })
        );
    }
}
