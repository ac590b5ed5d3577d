//! A connection's input buffer: bytes read from the socket and not yet consumed.

/// Bytes in `storage[start..end]` are read and not yet consumed. The storage is zeroed once when
/// it grows and then reused: a `Vec` kept at the length of its data would be zero-filled again
/// before every read (8 KiB per read, the largest single cost callgrind saw on a request), and
/// consuming from the front moves nothing until room at the back runs out.
#[derive(Default)]
pub struct ReadBuffer {
    storage: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether any storage is allocated (a connection waits for its first bytes without it).
    pub fn has_storage(&self) -> bool {
        !self.storage.is_empty()
    }

    /// Drops the first `count` unconsumed bytes.
    pub fn consume(&mut self, count: usize) {
        assert!(
            count <= self.len(),
            "consumed {count} of {} buffered bytes",
            self.len()
        );
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Room for at least `minimum` more bytes after the data, to read into and then `commit`.
    /// Moves the data to the front, or grows the storage, only when the room at the back is
    /// too small.
    pub fn spare(&mut self, minimum: usize) -> &mut [u8] {
        if self.storage.len() - self.end < minimum {
            if self.start > 0 {
                self.storage.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.storage.len() - self.end < minimum {
                self.storage.resize(self.end + minimum, 0);
            }
        }
        &mut self.storage[self.end..]
    }

    /// Marks `count` bytes written into `spare` as data.
    pub fn commit(&mut self, count: usize) {
        assert!(
            self.end + count <= self.storage.len(),
            "committed more than the spare room"
        );
        self.end += count;
    }

    /// While empty, gives back storage beyond `keep` bytes once it is larger than `limit` (a
    /// large request grew it; an idle connection should not hold that memory).
    pub fn shrink_when_empty(&mut self, limit: usize, keep: usize) {
        if self.is_empty() && self.storage.len() > limit {
            self.storage.truncate(keep);
            self.storage.shrink_to_fit();
        }
    }

    /// Frees the storage if no bytes wait in it; the next read allocates it again.
    pub fn release_when_empty(&mut self) {
        if self.is_empty() {
            self.storage = Vec::new();
        }
    }

    /// Bytes of storage held (for tests).
    #[cfg(test)]
    fn storage_len(&self) -> usize {
        self.storage.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_released_only_when_no_bytes_wait() {
        let mut buffer = ReadBuffer::default();
        buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nPOST");
        buffer.consume(18);
        buffer.release_when_empty();
        assert_eq!(buffer.data(), b"POST", "a pipelined request's start is kept");
        buffer.consume(4);
        buffer.release_when_empty();
        assert!(!buffer.has_storage());
        buffer.extend_from_slice(b"next");
        assert_eq!(buffer.data(), b"next");
    }

    #[test]
    fn data_survives_consuming_compacting_and_growing() {
        let mut buffer = ReadBuffer::default();
        assert!(!buffer.has_storage() && buffer.is_empty());
        buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nPOST");
        assert_eq!(buffer.data(), b"GET / HTTP/1.1\r\n\r\nPOST");
        buffer.consume(18);
        assert_eq!(buffer.data(), b"POST");
        // Room at the back runs out: the data moves to the front instead of the storage growing.
        let storage = buffer.storage_len();
        let room = buffer.spare(storage - 4).len();
        assert_eq!(
            (room, buffer.storage_len(), buffer.data()),
            (storage - 4, storage, &b"POST"[..])
        );
        buffer.spare(3)[..3].copy_from_slice(b" /x");
        buffer.commit(3);
        assert_eq!(buffer.data(), b"POST /x");
        // More than fits: the storage grows and keeps the data.
        let wanted = storage * 3;
        assert!(buffer.spare(wanted).len() >= wanted);
        assert_eq!(buffer.data(), b"POST /x");
        buffer.consume(7);
        assert!(buffer.is_empty());
        buffer.shrink_when_empty(16, 8);
        assert_eq!(buffer.storage_len(), 8);
    }

    #[test]
    fn a_buffer_with_data_is_not_shrunk() {
        let mut buffer = ReadBuffer::default();
        buffer.extend_from_slice(&[7; 64]);
        buffer.shrink_when_empty(16, 8);
        assert_eq!(buffer.len(), 64);
    }

    #[test]
    #[should_panic(expected = "consumed 5 of 4")]
    fn consuming_more_than_buffered_is_a_bug() {
        let mut buffer = ReadBuffer::default();
        buffer.extend_from_slice(b"abcd");
        buffer.consume(5);
    }
}
