//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (no IO).
//!
//! The server feeds whatever bytes it has; the decoder appends body data to the output, skips
//! chunk extensions and trailer fields, and stops exactly after the final empty line so that
//! the bytes of a pipelined next request stay in the caller's buffer. Line endings inside the
//! framing must be CRLF: accepting a bare LF here is a known request-smuggling vector when a
//! proxy in front of us reads the framing differently.

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// The framing is broken: a bad chunk size, a missing CRLF, or too many extension and
    /// trailer bytes.
    Malformed(&'static str),
    /// A chunk would take the decoded body past the allowed size.
    TooLarge,
}

/// The decoder's position inside the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal chunk size; `digit_count` digits seen so far.
    Size { value: u64, digit_count: u32 },
    /// Whitespace after the size, before `;` or CR.
    SizeWhitespace { value: u64 },
    /// Inside a chunk extension, skipped up to CR.
    Extension { value: u64 },
    /// Saw CR after the size line, expecting LF.
    SizeLineFeed { value: u64 },
    /// Copying chunk data; `remaining` bytes left in this chunk.
    Data { remaining: u64 },
    /// After chunk data, expecting CR.
    DataCarriageReturn,
    /// After chunk data and CR, expecting LF.
    DataLineFeed,
    /// At the start of a trailer line (or of the final empty line).
    TrailerLineStart,
    /// Inside a trailer field, skipped up to CR.
    TrailerLine,
    /// Saw CR at the end of a trailer field, expecting LF.
    TrailerLineFeed,
    /// Saw CR on the final empty line, expecting LF.
    FinalLineFeed,
    /// The whole body has been decoded.
    Done,
}

/// Decodes one chunked body, fed in pieces of any size.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_body_bytes: usize,
    max_overhead_bytes: usize,
    decoded_bytes: usize,
    overhead_bytes: usize,
}

/// A chunk size has at most this many hex digits (u64); more is an overflow.
const MAX_SIZE_DIGITS: u32 = 16;

impl ChunkedDecoder {
    /// A decoder that rejects bodies over `max_body_bytes` decoded bytes, and more than
    /// `max_overhead_bytes` of chunk extensions plus trailer fields in total.
    pub fn new(max_body_bytes: usize, max_overhead_bytes: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digit_count: 0,
            },
            max_body_bytes,
            max_overhead_bytes,
            decoded_bytes: 0,
            overhead_bytes: 0,
        }
    }

    /// True once the terminating chunk and trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as possible, appending body bytes to `output`. Returns how
    /// many input bytes were consumed; that is all of them unless the body ended inside
    /// `input`.
    pub fn decode(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut position = 0;
        while position < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                // Copy a whole run of data at once rather than byte by byte.
                let available = input.len() - position;
                let take = usize::try_from(remaining)
                    .map_or(available, |remaining| remaining.min(available));
                output.extend_from_slice(&input[position..position + take]);
                position += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCarriageReturn
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            self.state = self.step(input[position])?;
            position += 1;
        }
        Ok(position)
    }

    /// Advances the framing state by one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<State, ChunkedError> {
        match self.state {
            State::Size { value, digit_count } => match hex_digit_value(byte) {
                Some(digit) => {
                    if digit_count == MAX_SIZE_DIGITS {
                        return Err(ChunkedError::Malformed("chunk size is too large"));
                    }
                    Ok(State::Size {
                        value: value << 4 | u64::from(digit),
                        digit_count: digit_count + 1,
                    })
                }
                None if digit_count == 0 => Err(ChunkedError::Malformed(
                    "chunk size is not a hexadecimal number",
                )),
                None => self.after_size(value, byte),
            },
            State::SizeWhitespace { value } => self.after_size(value, byte),
            State::Extension { value } => match byte {
                b'\r' => Ok(State::SizeLineFeed { value }),
                b'\n' => Err(ChunkedError::Malformed(
                    "chunk size line must end with CRLF",
                )),
                _ => {
                    self.count_overhead()?;
                    Ok(State::Extension { value })
                }
            },
            State::SizeLineFeed { value } => {
                if byte != b'\n' {
                    return Err(ChunkedError::Malformed(
                        "chunk size line must end with CRLF",
                    ));
                }
                self.start_chunk(value)
            }
            State::DataCarriageReturn => match byte {
                b'\r' => Ok(State::DataLineFeed),
                _ => Err(ChunkedError::Malformed(
                    "chunk data must be followed by CRLF",
                )),
            },
            State::DataLineFeed => match byte {
                b'\n' => Ok(State::Size {
                    value: 0,
                    digit_count: 0,
                }),
                _ => Err(ChunkedError::Malformed(
                    "chunk data must be followed by CRLF",
                )),
            },
            State::TrailerLineStart => match byte {
                b'\r' => Ok(State::FinalLineFeed),
                b'\n' => Err(ChunkedError::Malformed(
                    "trailer section must end with CRLF",
                )),
                _ => {
                    self.count_overhead()?;
                    Ok(State::TrailerLine)
                }
            },
            State::TrailerLine => match byte {
                b'\r' => Ok(State::TrailerLineFeed),
                b'\n' => Err(ChunkedError::Malformed("trailer field must end with CRLF")),
                _ => {
                    self.count_overhead()?;
                    Ok(State::TrailerLine)
                }
            },
            State::TrailerLineFeed => match byte {
                b'\n' => Ok(State::TrailerLineStart),
                _ => Err(ChunkedError::Malformed("trailer field must end with CRLF")),
            },
            State::FinalLineFeed => match byte {
                b'\n' => Ok(State::Done),
                _ => Err(ChunkedError::Malformed(
                    "trailer section must end with CRLF",
                )),
            },
            State::Data { .. } | State::Done => unreachable!("data and done are handled by decode"),
        }
    }

    /// Handles the byte right after the chunk size digits (or after whitespace following them).
    fn after_size(&mut self, value: u64, byte: u8) -> Result<State, ChunkedError> {
        match byte {
            b'\r' => Ok(State::SizeLineFeed { value }),
            b';' => {
                self.count_overhead()?;
                Ok(State::Extension { value })
            }
            b' ' | b'\t' => {
                self.count_overhead()?;
                Ok(State::SizeWhitespace { value })
            }
            _ => Err(ChunkedError::Malformed(
                "chunk size is not a hexadecimal number",
            )),
        }
    }

    /// Checks a complete chunk size against the body limit and moves on to its data.
    fn start_chunk(&mut self, size: u64) -> Result<State, ChunkedError> {
        if size == 0 {
            return Ok(State::TrailerLineStart);
        }
        let allowed = (self.max_body_bytes - self.decoded_bytes) as u64;
        if size > allowed {
            return Err(ChunkedError::TooLarge);
        }
        // The check above keeps this within max_body_bytes, so it fits in usize.
        self.decoded_bytes += size as usize;
        Ok(State::Data { remaining: size })
    }

    fn count_overhead(&mut self) -> Result<(), ChunkedError> {
        self.overhead_bytes += 1;
        if self.overhead_bytes > self.max_overhead_bytes {
            return Err(ChunkedError::Malformed(
                "chunk extensions and trailers are too large",
            ));
        }
        Ok(())
    }
}

fn hex_digit_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one piece and returns (decoded body, consumed byte count).
    fn decode_whole(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut decoder = ChunkedDecoder::new(1024, 256);
        let mut output = Vec::new();
        let consumed = decoder.decode(input, &mut output)?;
        assert!(decoder.is_done(), "body incomplete after {consumed} bytes");
        Ok((output, consumed))
    }

    #[test]
    fn decodes_chunks_and_stops_after_the_final_line() {
        let input = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (body, consumed) = decode_whole(input).unwrap();
        assert_eq!(body, b"hello, world");
        assert_eq!(&input[consumed..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn skips_extensions_and_trailers_and_accepts_upper_case_hex() {
        let input =
            b"A;name=value;other\r\n0123456789\r\n0 ;last\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n";
        let (body, consumed) = decode_whole(input).unwrap();
        assert_eq!(body, b"0123456789");
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn gives_the_same_result_for_every_split_point() {
        let input = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\ntrailer: 1\r\n\r\nnext";
        let body_length = input.len() - b"next".len();
        for split_point in 0..=input.len() {
            let mut decoder = ChunkedDecoder::new(1024, 256);
            let mut output = Vec::new();
            let first = decoder.decode(&input[..split_point], &mut output).unwrap();
            assert_eq!(
                first,
                split_point.min(body_length),
                "the first part is consumed up to the end of the body"
            );
            let second = decoder.decode(&input[split_point..], &mut output).unwrap();
            assert!(decoder.is_done());
            assert_eq!(output, b"abc0123456789abcdef");
            assert_eq!(&input[first + second..], b"next");
        }
    }

    #[test]
    fn rejects_malformed_framing() {
        let malformed: [&[u8]; 9] = [
            b"\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"0\r\ntrailer: 1\n\r\n",
            b"5 x\r\nhello\r\n",
            b"10000000000000000\r\n",
        ];
        for input in malformed {
            let mut decoder = ChunkedDecoder::new(1024, 256);
            let result = decoder.decode(input, &mut Vec::new());
            assert!(
                matches!(result, Err(ChunkedError::Malformed(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rejects_a_chunk_that_exceeds_the_body_limit_before_reading_it() {
        let mut decoder = ChunkedDecoder::new(10, 256);
        let mut output = Vec::new();
        assert_eq!(decoder.decode(b"6\r\nabcdef\r\n", &mut output), Ok(11));
        assert_eq!(
            decoder.decode(b"5\r\n", &mut output),
            Err(ChunkedError::TooLarge)
        );
        assert_eq!(output, b"abcdef");
        let mut decoder = ChunkedDecoder::new(10, 256);
        assert_eq!(
            decoder.decode(b"ffffffffffffffff\r\n", &mut Vec::new()),
            Err(ChunkedError::TooLarge)
        );
    }

    #[test]
    fn limits_extension_and_trailer_bytes() {
        let mut decoder = ChunkedDecoder::new(1024, 8);
        let result = decoder.decode(b"1;0123456789\r\n", &mut Vec::new());
        assert!(matches!(result, Err(ChunkedError::Malformed(_))));
        let mut decoder = ChunkedDecoder::new(1024, 8);
        let result = decoder.decode(b"0\r\nx-trailer: 123\r\n\r\n", &mut Vec::new());
        assert!(matches!(result, Err(ChunkedError::Malformed(_))));
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let valid = b"5;ext=1\r\nhello\r\na\r\n0123456789\r\n0\r\ntrailer: x\r\n\r\n";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..2000 {
            let mut input = valid.to_vec();
            for _ in 0..1 + next(3) {
                let position = next(input.len());
                let replacements = b"\r\n;0aF: x";
                input[position] = replacements[next(replacements.len())];
            }
            let mut decoder = ChunkedDecoder::new(16, 16);
            let mut output = Vec::new();
            let split_point = next(input.len() + 1);
            let consumed = decoder
                .decode(&input[..split_point], &mut output)
                .and_then(|first| {
                    decoder
                        .decode(&input[split_point..], &mut output)
                        .map(|second| first + second)
                });
            if let Ok(consumed) = consumed {
                assert!(consumed <= input.len());
                assert!(output.len() <= 16);
            }
        }
    }
}
