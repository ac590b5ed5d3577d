//! The input and output buffers of one upstream connection, sized by what the connection is
//! doing rather than allocated at their largest up front.
//!
//! ureq's own `LazyBuffers` allocate (and zero) the whole configured input and output size on
//! first use and keep both for the life of the connection: 32 KiB for every open stream, and
//! twice that over TLS, where the TLS session and the socket under it each have a pair. A
//! stream that is being held open spends hours reading small SSE events and never writes again.
//! Here the input starts small and grows (up to the configured size) only when a read fills it,
//! and the output, needed only while a request is sent, is given back once the response has
//! started and the connection is about to wait for more of it (`output_is_idle`,
//! `release_output`), or else after a few reads in a row without a write. The input shrinks at
//! the same moment, from its first 4 KiB (or more: sending a request body grew it to make room for
//! ureq's "tmp") to 1 KiB, which a stream waiting for its next event needs. A held stream keeps
//! 1 KiB instead of 32; over TLS the session's input is given back entirely while its socket waits
//! (`release_empty_input`), since rustls decrypts into a buffer of its own.
//!
//! The buffers also hold back a request head until its body is written, so the two leave in one
//! write (`take_output`): ureq transmits the head and then the body, and two writes cost a
//! system call more and reach the upstream as two segments, the first of which it can do
//! nothing with. Whatever is held back is sent before the connection next reads
//! (`take_held_output`), and every request is followed by reading its response.

use ureq::unversioned::transport::Buffers;

/// The input's size before any read has filled it. Most reads of an SSE stream and most
/// response heads fit; a read that fills it doubles it.
const FIRST_INPUT_BYTES: usize = 4 * 1024;

/// The input's size while a started response waits for more (a stream between its events),
/// when no more than half of it is unconsumed. An SSE event of the usual size fits: OpenAI's and
/// Anthropic's are a few hundred bytes, Gemini's under a kilobyte. A larger one fills it, and a
/// read that fills the input doubles it for what follows. A stream spends nearly all its life
/// waiting, so this, not `FIRST_INPUT_BYTES`, is what each held stream keeps: 1,000 streams held
/// over TLS, where the session and the socket under it each have an input, took 35.5 KiB each
/// with 4 KiB here.
const WAITING_INPUT_BYTES: usize = 1024;

/// Reads that brought bytes, in a row without a write in between, after which the next read
/// releases the output even when its transport did not (the socket releases it when its read
/// would wait, a TLS session when its read must go to the socket; see `output_is_idle`): the
/// backstop for reads that never reach either check. A request that is answered at once reads
/// its response in one or two; a stream reads on for minutes.
const ANSWERED_READS_BEFORE_RELEASING_OUTPUT: u32 = 3;

/// ureq reads a request body into the free part of the input (its "tmp"), this much at least.
const MINIMUM_TMP_BYTES: usize = 10 * 1024;

pub struct ConnectionBuffers {
    /// `input[consumed..filled]` is read and not yet consumed; `input[filled..]` is free.
    input: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// The most the input grows to when reads keep filling it (ureq's `input_buffer_size`).
    largest_input: usize,
    /// Empty while released; `output_size` long while a request may be written.
    output: Vec<u8>,
    output_size: usize,
    /// `output[..held_output]` was transmitted by ureq but not yet sent (see `take_output`).
    held_output: usize,
    /// Whether the last consume took any bytes (ureq's "progress", see `can_use_input`).
    progress: bool,
    /// Reads since the last write that brought bytes: the response has started once it is 1.
    answered_reads_since_output: u32,
}

impl ConnectionBuffers {
    /// Buffers that grow the input up to `largest_input` bytes and write through an output of
    /// `output_size` bytes. Nothing is allocated yet.
    pub fn new(largest_input: usize, output_size: usize) -> ConnectionBuffers {
        assert!(
            largest_input > 0 && output_size > 0,
            "ureq's buffer sizes are never zero"
        );
        ConnectionBuffers {
            input: Vec::new(),
            filled: 0,
            consumed: 0,
            largest_input,
            output: Vec::new(),
            output_size,
            held_output: 0,
            progress: false,
            answered_reads_since_output: 0,
        }
    }

    /// Bytes held by the two buffers.
    #[cfg(test)]
    fn allocated_bytes(&self) -> usize {
        self.input.len() + self.output.len()
    }

    fn ensure_output(&mut self) {
        self.answered_reads_since_output = 0;
        if self.output.len() < self.output_size {
            self.output.resize(self.output_size, 0);
        }
    }

    /// Takes the `amount` bytes ureq has just written to the output and transmits: the bytes
    /// to send now (with any held back before them), or `None` when they are held back. A
    /// write that ends a request head (`\r\n\r\n`) and follows nothing held is held, while
    /// the output has room left for a body to join it.
    pub fn take_output(&mut self, amount: usize) -> Option<&[u8]> {
        let end = self.held_output + amount;
        assert!(end <= self.output.len(), "transmitted past the output buffer");
        if self.held_output == 0 && end < self.output.len() && self.output[..end].ends_with(b"\r\n\r\n") {
            self.held_output = end;
            return None;
        }
        self.held_output = 0;
        Some(&self.output[..end])
    }

    /// The bytes held back by `take_output`, if any, which are then no longer held: the
    /// transport sends them before it reads.
    pub fn take_held_output(&mut self) -> Option<&[u8]> {
        let held = std::mem::take(&mut self.held_output);
        (held > 0).then(|| &self.output[..held])
    }

    /// Whether bytes are held back: a connection returned to the pool with a request head
    /// never sent must not be reused.
    pub fn holds_output(&self) -> bool {
        self.held_output > 0
    }

    /// Whether the output is allocated but not needed until the connection's next request: the
    /// response has started arriving and nothing waits to be sent. A transport that finds no
    /// bytes ready for its next read is about to wait (a stream between events, a slow answer)
    /// and releases the output first (`release_output`); one whose bytes are already there
    /// reads them and keeps it, so a response that simply arrives in several reads does not
    /// give the output up and allocate it again for the next request.
    ///
    /// Released only at the fourth read instead, every stream waiting for its next event kept
    /// 28 KiB: opening 3,000 streams whose events come seconds apart peaked at 166 MiB instead
    /// of 102 (scripts/bench --held-streams 3000), 9,872 streams at 502 MiB instead of 291.
    pub fn output_is_idle(&self) -> bool {
        self.answered_reads_since_output > 0 && !self.output.is_empty() && self.held_output == 0
    }

    /// Whether nothing has been read since the last write: the next read waits for the first
    /// bytes of an answer.
    pub fn awaits_answer(&self) -> bool {
        self.answered_reads_since_output == 0
    }

    /// Gives back the output until the next write, and shrinks the input to its waiting size.
    pub fn release_output(&mut self) {
        self.output = Vec::new();
        self.shift_consumed_out();
        self.shrink_input_to_waiting_size();
    }

    /// Gives the input back entirely when it holds nothing unconsumed, before a wait that needs
    /// no buffer of ours (a TLS session waits for its socket and decrypts into its own buffer;
    /// only then is the plaintext copied here), once the response has started. The next read
    /// allocates the waiting size again, not the first size. Returns whether it did.
    pub fn release_empty_input(&mut self) -> bool {
        // Before the response's first bytes the next read is a response head, which the input
        // the connection already has is sized for.
        if self.awaits_answer() || self.consumed < self.filled || self.input.is_empty() {
            return false;
        }
        self.input = Vec::new();
        self.consumed = 0;
        self.filled = 0;
        true
    }

    /// Moves the unconsumed bytes to the front when that frees room at the back.
    fn shift_consumed_out(&mut self) {
        if self.consumed == 0 {
            return;
        }
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        } else {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Gives back input past `WAITING_INPUT_BYTES` (its first size, or more grown for a request
    /// body's tmp or a long response head) when what is unconsumed fits in half of that; a later
    /// read that fills the smaller input grows it again.
    fn shrink_input_to_waiting_size(&mut self) {
        let waiting_size = WAITING_INPUT_BYTES.min(self.largest_input);
        if self.input.len() > waiting_size && self.filled <= waiting_size / 2 {
            self.input.truncate(waiting_size);
            self.input.shrink_to_fit();
        }
    }

    fn grow_input_to(&mut self, size: usize) {
        if self.input.len() < size {
            self.input.resize(size, 0);
        }
    }
}

impl Buffers for ConnectionBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.ensure_output();
        &mut self.output[self.held_output..]
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    /// Called by the transports before each read (again when a read is retried).
    fn input_append_buf(&mut self) -> &mut [u8] {
        if self.answered_reads_since_output >= ANSWERED_READS_BEFORE_RELEASING_OUTPUT && self.output_is_idle() {
            self.release_output();
        } else {
            self.shift_consumed_out();
        }
        if self.input.is_empty() {
            // Empty before a connection's first read, or given back by `release_empty_input`
            // while a started response waited: a response head gets the first size, the rest of
            // a response the waiting size.
            let size = if self.awaits_answer() { FIRST_INPUT_BYTES } else { WAITING_INPUT_BYTES };
            self.grow_input_to(size.min(self.largest_input));
        } else if self.filled == self.input.len() && self.input.len() < self.largest_input {
            // Full of unconsumed bytes (a response head or a chunk header longer than the
            // input so far): make room, up to the configured size, as ureq's buffer would have.
            self.grow_input_to((self.input.len() * 2).min(self.largest_input));
        }
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        if amount > 0 {
            self.answered_reads_since_output = self.answered_reads_since_output.saturating_add(1);
        }
        self.filled += amount;
        assert!(
            self.filled <= self.input.len(),
            "appended past the input buffer"
        );
        // A read that filled all the room it was given suggests more is waiting: a larger
        // buffer takes it in fewer reads.
        if self.filled == self.input.len() && self.input.len() < self.largest_input {
            self.grow_input_to((self.input.len() * 2).min(self.largest_input));
        }
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed += amount;
        assert!(self.consumed <= self.filled, "consumed past the input read");
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.ensure_output();
        self.shift_consumed_out();
        self.grow_input_to(self.filled + MINIMUM_TMP_BYTES);
        (&mut self.input[self.filled..], &mut self.output[self.held_output..])
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(buffers: &mut ConnectionBuffers, bytes: &[u8]) -> usize {
        let room = buffers.input_append_buf();
        let amount = bytes.len().min(room.len());
        room[..amount].copy_from_slice(&bytes[..amount]);
        buffers.input_appended(amount);
        amount
    }

    #[test]
    fn nothing_is_allocated_before_the_first_use() {
        let buffers = ConnectionBuffers::new(16 * 1024, 16 * 1024);
        assert_eq!(buffers.allocated_bytes(), 0);
    }

    #[test]
    fn the_input_starts_small_and_doubles_when_reads_fill_it_up_to_the_configured_size() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        assert_eq!(buffers.input_append_buf().len(), FIRST_INPUT_BYTES);
        let large = vec![b'x'; 64 * 1024];
        let mut sizes = Vec::new();
        for _ in 0..4 {
            append(&mut buffers, &large);
            let unconsumed = buffers.input().len();
            buffers.input_consume(unconsumed);
            sizes.push(buffers.input.len());
        }
        assert_eq!(sizes, [8 * 1024, 16 * 1024, 16 * 1024, 16 * 1024]);
    }

    #[test]
    fn small_reads_keep_the_input_small() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        for _ in 0..100 {
            append(&mut buffers, b"data: {\"delta\":\"hi\"}\n\n");
            let unconsumed = buffers.input().len();
            buffers.input_consume(unconsumed);
        }
        assert_eq!(buffers.input.len(), FIRST_INPUT_BYTES);
    }

    #[test]
    fn a_head_longer_than_the_first_size_is_kept_whole_while_the_input_grows() {
        let head: Vec<u8> = (0..10_000u32)
            .map(|index| b'a' + (index % 26) as u8)
            .collect();
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        let mut offered = 0;
        while offered < head.len() {
            // Nothing is consumed: the parser waits for the whole head.
            offered += append(&mut buffers, &head[offered..]);
        }
        assert_eq!(buffers.input(), &head[..]);
    }

    #[test]
    fn the_input_never_grows_past_the_configured_size() {
        let mut buffers = ConnectionBuffers::new(6 * 1024, 1024);
        let large = vec![b'x'; 64 * 1024];
        append(&mut buffers, &large);
        append(&mut buffers, &large);
        assert_eq!(buffers.input().len(), 6 * 1024);
        assert!(buffers.input_append_buf().is_empty());
    }

    #[test]
    fn unconsumed_bytes_move_to_the_front_and_stay_in_order() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        append(&mut buffers, b"0123456789");
        buffers.input_consume(4);
        append(&mut buffers, b"abc");
        assert_eq!(buffers.input(), b"456789abc");
        assert_eq!(buffers.consumed, 0);
    }

    #[test]
    fn the_output_is_released_after_reads_without_a_write_and_comes_back_on_the_next_write() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 16 * 1024);
        buffers.output()[..4].copy_from_slice(b"POST");
        assert_eq!(buffers.output.len(), 16 * 1024);
        for _ in 0..ANSWERED_READS_BEFORE_RELEASING_OUTPUT {
            append(&mut buffers, b"x");
        }
        assert_eq!(
            buffers.output.len(),
            16 * 1024,
            "a response read in a few reads keeps the output"
        );
        append(&mut buffers, b"x");
        assert!(
            buffers.output.is_empty(),
            "a stream that only reads gives the output back"
        );
        assert_eq!(buffers.output().len(), 16 * 1024);
        assert_eq!(buffers.answered_reads_since_output, 0);
    }

    #[test]
    fn an_empty_input_is_given_back_only_once_the_response_has_started_and_returns_at_the_waiting_size() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        buffers.output()[..4].copy_from_slice(b"POST");
        buffers.input_append_buf();
        assert!(!buffers.release_empty_input(), "before the answer the input waits for a response head");
        assert_eq!(buffers.input.len(), FIRST_INPUT_BYTES);

        append(&mut buffers, b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n");
        buffers.input_consume(10);
        assert!(!buffers.release_empty_input(), "unconsumed bytes keep the input");
        let unconsumed = buffers.input().len();
        buffers.input_consume(unconsumed);
        assert!(buffers.release_empty_input());
        assert_eq!(buffers.allocated_bytes(), 1024, "only the output is left");
        assert!(!buffers.release_empty_input(), "nothing left to give back");

        assert_eq!(buffers.input_append_buf().len(), WAITING_INPUT_BYTES);
        append(&mut buffers, b"data: 2\n\n");
        assert_eq!(buffers.input(), b"data: 2\n\n");

        // The next request's response head gets the first size again.
        let unconsumed = buffers.input().len();
        buffers.input_consume(unconsumed);
        assert!(buffers.release_empty_input());
        buffers.output()[..4].copy_from_slice(b"POST");
        assert_eq!(buffers.input_append_buf().len(), FIRST_INPUT_BYTES);
    }

    #[test]
    fn the_output_is_idle_once_the_response_has_started_and_comes_back_for_the_next_request() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 16 * 1024);
        let (tmp, _) = buffers.tmp_and_output();
        tmp[..2].copy_from_slice(b"{}");
        assert!(!buffers.output_is_idle(), "nothing has been answered yet");
        buffers.input_append_buf();
        buffers.input_appended(0);
        assert!(!buffers.output_is_idle(), "a read that brought nothing is no answer");
        append(&mut buffers, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let unconsumed = buffers.input().len();
        buffers.input_consume(unconsumed);
        assert!(buffers.output_is_idle(), "the response has started");
        buffers.release_output();
        assert_eq!(
            (buffers.output.len(), buffers.input.len()),
            (0, WAITING_INPUT_BYTES),
            "the output and the input grown for the body are given back"
        );
        assert!(!buffers.output_is_idle());
        append(&mut buffers, b"10\r\ndata: {\"a\":1}\n\n\r\n");
        assert_eq!(buffers.input(), b"10\r\ndata: {\"a\":1}\n\n\r\n");
        assert_eq!(buffers.output().len(), 16 * 1024, "the next request has an output again");
        assert!(!buffers.output_is_idle(), "a new request has not been answered");
    }

    #[test]
    fn an_output_holding_a_head_is_never_idle() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        assert_eq!(transmit(&mut buffers, b"GET / HTTP/1.1\r\n\r\n"), None);
        append(&mut buffers, b"HTTP/1.1 200 OK\r\n");
        assert!(!buffers.output_is_idle());
    }

    #[test]
    fn the_input_grown_for_a_request_body_shrinks_back_when_the_output_is_released() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 16 * 1024);
        let (tmp, _) = buffers.tmp_and_output();
        assert!(tmp.len() >= MINIMUM_TMP_BYTES);
        assert!(buffers.input.len() > FIRST_INPUT_BYTES);
        for _ in 0..ANSWERED_READS_BEFORE_RELEASING_OUTPUT + 1 {
            append(&mut buffers, b"data: {}\n\n");
            let unconsumed = buffers.input().len();
            buffers.input_consume(unconsumed);
        }
        assert_eq!(
            (buffers.output.len(), buffers.input.len(), buffers.input.capacity()),
            (0, WAITING_INPUT_BYTES, WAITING_INPUT_BYTES)
        );
        append(&mut buffers, b"data: {\"more\": true}\n\n");
        assert_eq!(buffers.input(), b"data: {\"more\": true}\n\n");
    }

    #[test]
    fn unconsumed_input_larger_than_half_the_waiting_size_is_not_shrunk() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 16 * 1024);
        buffers.tmp_and_output();
        let grown = buffers.input.len();
        for _ in 0..ANSWERED_READS_BEFORE_RELEASING_OUTPUT - 1 {
            append(&mut buffers, b"x");
            let unconsumed = buffers.input().len();
            buffers.input_consume(unconsumed);
        }
        // Half an event more than half the waiting size, waiting for the rest.
        let partial_event = vec![b'x'; WAITING_INPUT_BYTES / 2 + 1];
        append(&mut buffers, &partial_event);
        append(&mut buffers, b"y");
        assert!(buffers.output.is_empty());
        assert_eq!(buffers.input.len(), grown);
        assert_eq!(buffers.input().len(), WAITING_INPUT_BYTES / 2 + 2);
    }

    fn transmit<'a>(buffers: &'a mut ConnectionBuffers, bytes: &[u8]) -> Option<&'a [u8]> {
        buffers.output()[..bytes.len()].copy_from_slice(bytes);
        buffers.take_output(bytes.len())
    }

    #[test]
    fn a_request_head_is_held_back_until_its_body_joins_it() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        let head = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(transmit(&mut buffers, head), None);
        assert!(buffers.holds_output());
        let (_, output) = buffers.tmp_and_output();
        assert_eq!(output.len(), 1024 - head.len(), "the body is written after the held head");
        let sent = transmit(&mut buffers, b"{}").expect("the body sends the head with it").to_vec();
        assert_eq!(sent, [&head[..], b"{}"].concat());
        assert!(!buffers.holds_output());
        assert_eq!(buffers.take_held_output(), None);
    }

    #[test]
    fn a_head_without_a_body_is_sent_before_the_response_is_read() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        let head = b"GET /v1/models HTTP/1.1\r\nhost: upstream\r\n\r\n";
        assert_eq!(transmit(&mut buffers, head), None);
        assert_eq!(buffers.take_held_output(), Some(&head[..]));
        assert!(!buffers.holds_output());
        assert_eq!(buffers.take_held_output(), None);
    }

    #[test]
    fn writes_that_end_no_head_or_fill_the_output_are_sent_at_once() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 64);
        assert_eq!(transmit(&mut buffers, b"a part of a long head\r\n"), Some(&b"a part of a long head\r\n"[..]));
        let full = [b"x".repeat(60), b"\r\n\r\n".to_vec()].concat();
        assert_eq!(transmit(&mut buffers, &full), Some(&full[..]), "no room is left for a body");
        let head = b"POST / HTTP/1.1\r\n\r\n";
        assert_eq!(transmit(&mut buffers, head), None);
        let chunk_end = b"0\r\n\r\n";
        let sent = transmit(&mut buffers, chunk_end).expect("nothing is held twice").to_vec();
        assert_eq!(sent, [&head[..], &chunk_end[..]].concat());
    }

    #[test]
    fn the_output_is_not_released_while_it_holds_a_head() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        assert_eq!(transmit(&mut buffers, b"GET / HTTP/1.1\r\n\r\n"), None);
        for _ in 0..ANSWERED_READS_BEFORE_RELEASING_OUTPUT + 2 {
            append(&mut buffers, b"x");
        }
        assert_eq!(buffers.take_held_output(), Some(&b"GET / HTTP/1.1\r\n\r\n"[..]));
    }

    #[test]
    fn the_tmp_has_room_for_a_body_chunk_beside_unconsumed_input() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 8 * 1024);
        append(&mut buffers, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (tmp, output) = buffers.tmp_and_output();
        assert!(tmp.len() >= MINIMUM_TMP_BYTES);
        assert_eq!(output.len(), 8 * 1024);
        assert_eq!(buffers.input(), b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn input_is_usable_only_after_a_consume_that_made_progress() {
        let mut buffers = ConnectionBuffers::new(16 * 1024, 1024);
        append(&mut buffers, b"partial");
        assert!(!buffers.can_use_input());
        buffers.input_consume(3);
        assert!(buffers.can_use_input());
        buffers.input_consume(0);
        assert!(!buffers.can_use_input());
    }
}
