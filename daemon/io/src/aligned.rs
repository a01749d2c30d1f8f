//! A heap buffer aligned for O_DIRECT: the one aligned buffer of drgw,
//! used by the staging log's ring, the NBD file backend, checksums and
//! materialize.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every O_DIRECT transfer (offset, length and buffer).
pub const DIRECT_ALIGNMENT: usize = 4096;

/// An initialised buffer whose start is [`DIRECT_ALIGNMENT`]-aligned.
pub struct AlignedBuffer {
    pointer: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory with no interior
// sharing; moving it to another thread moves that ownership.
unsafe impl Send for AlignedBuffer {}

impl AlignedBuffer {
    /// A zeroed buffer of `length_bytes` (> 0, a multiple of the alignment).
    pub fn zeroed(length_bytes: usize) -> AlignedBuffer {
        let layout = Self::layout(length_bytes);
        // SAFETY: the layout has a nonzero size (checked in `layout`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let pointer = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuffer { pointer, layout }
    }

    /// An aligned copy of `data` (its length > 0, a multiple of the
    /// alignment), without zeroing the memory first.
    pub fn copied_from(data: &[u8]) -> AlignedBuffer {
        let layout = Self::layout(data.len());
        // SAFETY: the layout has a nonzero size (checked in `layout`).
        let raw = unsafe { alloc::alloc(layout) };
        let pointer = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        // SAFETY: the new allocation is valid for `data.len()` bytes and
        // cannot overlap `data`; after the copy every byte is initialised,
        // before any slice of it exists.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), pointer.as_ptr(), data.len()) };
        AlignedBuffer { pointer, layout }
    }

    fn layout(length_bytes: usize) -> Layout {
        assert!(
            length_bytes > 0 && length_bytes % DIRECT_ALIGNMENT == 0,
            "aligned buffer length {length_bytes} must be a nonzero multiple of {DIRECT_ALIGNMENT}"
        );
        Layout::from_size_align(length_bytes, DIRECT_ALIGNMENT)
            .expect("length and alignment checked above")
    }

    /// Its length in bytes (a nonzero multiple of [`DIRECT_ALIGNMENT`]).
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// The start of the buffer, for an I/O submission that reads from it.
    pub fn as_ptr(&self) -> *const u8 {
        self.pointer.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `pointer` is valid for `layout.size()` initialised bytes
        // (allocated zeroed, or filled by the copy) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` or `copied_from` with exactly this
        // layout, freed once.
        unsafe { alloc::dealloc(self.pointer.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut buffer = AlignedBuffer::zeroed(2 * DIRECT_ALIGNMENT);
        assert_eq!(buffer.as_slice().as_ptr() as usize % DIRECT_ALIGNMENT, 0);
        assert!(buffer.as_slice().iter().all(|byte| *byte == 0));
        buffer.as_mut_slice()[4095] = 7;
        assert_eq!(buffer.as_slice()[4095], 7);
    }

    #[test]
    fn an_aligned_copy_holds_the_data() {
        let data: Vec<u8> = (0..3 * DIRECT_ALIGNMENT).map(|i| (i % 251) as u8).collect();
        // Misaligned on purpose: the copy is what O_DIRECT gets.
        let mut misaligned = vec![0u8; data.len() + 1];
        misaligned[1..].copy_from_slice(&data);
        let copy = AlignedBuffer::copied_from(&misaligned[1..]);
        assert_eq!(copy.as_slice().as_ptr() as usize % DIRECT_ALIGNMENT, 0);
        assert_eq!(copy.as_slice(), &data[..]);
    }

    #[test]
    #[should_panic(expected = "multiple of 4096")]
    fn an_unaligned_length_is_refused() {
        AlignedBuffer::copied_from(&[1, 2, 3]);
    }
}
