//! Small shared helpers: percent decoding, hex, SHA-256 digests, OS randomness, base64, clocks,
//! socket timeouts and a socket read that never waits.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Decodes `%XX` escapes and `+` (as a space, the form encoding rule); invalid escapes stay as written.
pub fn percent_decode(input: &str) -> String {
    decode_percent_escapes(input, true)
}

/// Decodes `%XX` escapes only, the rule for a URL's user, password, host and path, where `+` is
/// itself; invalid escapes stay as written.
pub fn percent_decode_url_part(input: &str) -> String {
    decode_percent_escapes(input, false)
}

fn decode_percent_escapes(input: &str, plus_as_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                match (hex_value(bytes[index + 1]), hex_value(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        decoded.push(high * 16 + low);
                        index += 3;
                    }
                    _ => {
                        decoded.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' if plus_as_space => {
                decoded.push(b' ');
                index += 1;
            }
            other => {
                decoded.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Encodes everything but unreserved characters (RFC 3986) as `%XX`.
pub fn percent_encode(input: &str) -> String {
    let mut encoded = String::with_capacity(input.len());
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Written as bytes: `String::push` encodes each char as UTF-8 and checks the capacity. The
    // hex of a client key's SHA-256, taken on every relayed request, cost 780 instructions that
    // way and 355 this way (callgrind).
    let mut digits = vec![0u8; bytes.len() * 2];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 15)];
    }
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// SHA-256 of `input`, as lower-case hex.
pub fn sha256_hex(input: &[u8]) -> String {
    hex(&Sha256::digest(input))
}

/// Fills a buffer from the operating system's random source.
pub fn os_random_bytes(buffer: &mut [u8]) {
    // Without OS randomness we cannot make keys or tokens safely; there is no sane fallback.
    getrandom::fill(buffer).expect("the operating system's random source failed");
}

/// A random u64 from the operating system (used to seed the balancer's generators).
pub fn os_random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    os_random_bytes(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// The characters of generated identifiers and keys: `[0-9A-Za-z]`.
pub const ALPHANUMERIC: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A random string of `length` characters from `[0-9A-Za-z]`, without modulo bias.
pub fn random_alphanumeric(length: usize) -> String {
    let mut out = String::with_capacity(length);
    let mut pool = [0u8; 64];
    while out.len() < length {
        os_random_bytes(&mut pool);
        for byte in pool {
            // 248 = 4 * 62: values at or above it would favour the first characters.
            if byte < 248 && out.len() < length {
                out.push(ALPHANUMERIC[(byte % 62) as usize] as char);
            }
        }
    }
    out
}

/// Standard base64 with padding.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let triple = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        out.push(ALPHABET[(triple >> 18) as usize & 63] as char);
        out.push(ALPHABET[(triple >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { ALPHABET[(triple >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { ALPHABET[triple as usize & 63] as char } else { '=' });
    }
    out
}

/// Decodes standard base64 (padding optional); `None` for any other character or a bad length.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let digits = input.trim_end_matches('=');
    if input.len() - digits.len() > 2 || digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut accumulator: u32 = 0;
    let mut bits = 0;
    for character in digits.bytes() {
        let value = match character {
            b'A'..=b'Z' => character - b'A',
            b'a'..=b'z' => character - b'a' + 26,
            b'0'..=b'9' => character - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        accumulator = accumulator << 6 | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits) as u8);
        }
    }
    Some(out)
}

/// `recv` on `fd` that never waits (`MSG_DONTWAIT`, plus `flags`, e.g. `MSG_PEEK`): `None` when
/// nothing is ready (the socket would block), else what `recv` returned (bytes, 0 at EOF, or an
/// error). The caller must own `fd` open for the call.
pub fn receive_without_waiting(fd: RawFd, buffer: &mut [u8], flags: libc::c_int) -> Option<io::Result<usize>> {
    loop {
        // SAFETY: `buffer` is valid for writes of its length. Any `fd` is memory-safe here (a
        // wrong one fails with EBADF or reads another socket), which is why owning it is the
        // caller's part.
        let received = unsafe {
            libc::recv(fd, buffer.as_mut_ptr().cast::<libc::c_void>(), buffer.len(), flags | libc::MSG_DONTWAIT)
        };
        if received >= 0 {
            return Some(Ok(received as usize));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return None,
            _ => return Some(Err(error)),
        }
    }
}

/// Whether a socket whose read or write timeout is `applied` may keep it for a wait that should
/// last at most `wanted`: it may if it is the same, or longer by a hair (1/64 of the wait, at
/// most 50 ms).
///
/// Deadlines make the wanted timeout a little shorter on every read (120 s, then 119.998 s, ...),
/// and setting it is a system call per read (may passes it on to `SO_RCVTIMEO`, which its
/// non-blocking sockets never use). Waiting a hair longer than asked is harmless; waiting less
/// would fail a read early, so a shorter applied timeout never fits.
pub fn applied_timeout_fits(applied: Option<Duration>, wanted: Option<Duration>) -> bool {
    const MOST_TOLERATED: Duration = Duration::from_millis(50);
    match (applied, wanted) {
        (None, None) => true,
        (Some(applied), Some(wanted)) => applied >= wanted && applied - wanted <= (wanted / 64).min(MOST_TOLERATED),
        _ => false,
    }
}

/// Seconds since the Unix epoch.
/// The parts joined into one string, allocated once at its final size. For strings built on
/// every request (upstream URLs, auth headers): `format!` goes through the formatting machinery
/// and grows its buffer step by step, several times the work for a few joined slices.
pub fn concat(parts: &[&str]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        joined.push_str(part);
    }
    joined
}

/// Appends the decimal digits of `number`, without the formatting machinery of `write!` (for
/// bytes written on every request).
pub fn push_decimal(out: &mut Vec<u8>, number: u64) {
    out.extend_from_slice(decimal_digits(number, &mut [0; 20]));
}

/// `push_decimal` for text.
pub fn push_decimal_text(out: &mut String, number: u64) {
    let mut buffer = [0; 20];
    let digits = decimal_digits(number, &mut buffer);
    out.push_str(std::str::from_utf8(digits).expect("decimal digits are ASCII"));
}

/// The decimal digits of `number`, written at the end of `digits`.
fn decimal_digits(mut number: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    &digits[start..]
}

/// `bytes` as text, invalid sequences replaced with U+FFFD, like `String::from_utf8_lossy`; but
/// valid input (nearly all of it: headers, SSE fields) is checked by `str::from_utf8`, which
/// skips ASCII a word at a time, rather than by the lossy decoder's walk byte by byte.
pub fn text_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

pub fn unix_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as i64).unwrap_or(0)
}

/// Lowers the calling thread's scheduling priority (nice 10) for background work (statistics,
/// database writes), so that on a small machine the relay's threads win the CPU when both want
/// it and a batch of writes never delays a client's request. Best effort: a failure only logs.
pub fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes its
        // nice value, and a failure is reported through the return value.
        let result = unsafe {
            let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread_id, 10)
        };
        if result != 0 {
            log::debug!("could not lower the priority of a background thread: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_joined_strings_match_format() {
        for number in [0, 7, 10, 99, 200, 404, 65_535, u64::from(u32::MAX), u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, number);
            assert_eq!(out, format!("x{number}").into_bytes());
        }
        assert_eq!(concat(&["http://h/v1", "/models/", "m", ":generateContent"]), "http://h/v1/models/m:generateContent");
        assert_eq!(concat(&[]), "");
    }

    #[test]
    fn lossy_text_matches_the_standard_lossy_decoder() {
        for bytes in [&b"plain ascii"[..], "ünïcödé ✓".as_bytes(), b"bad \xff byte", b"cut \xe2\x9c", b""] {
            assert_eq!(text_lossy(bytes), String::from_utf8_lossy(bytes));
        }
        assert!(matches!(text_lossy(b"ok"), std::borrow::Cow::Borrowed("ok")));
    }

    #[test]
    fn an_applied_timeout_fits_a_wait_it_covers_by_at_most_a_hair() {
        let seconds = Duration::from_secs;
        let millis = Duration::from_millis;
        assert!(applied_timeout_fits(None, None));
        assert!(applied_timeout_fits(Some(seconds(120)), Some(seconds(120))));
        assert!(applied_timeout_fits(Some(seconds(120)), Some(millis(119_990))), "10 ms longer on a 2 min wait");
        assert!(!applied_timeout_fits(Some(seconds(120)), Some(millis(119_900))), "100 ms is more than 50 ms");
        assert!(!applied_timeout_fits(Some(millis(119_990)), Some(seconds(120))), "never shorter than asked");
        assert!(applied_timeout_fits(Some(millis(101)), Some(millis(100))), "1 ms on a 100 ms wait");
        assert!(!applied_timeout_fits(Some(millis(103)), Some(millis(100))), "3 ms is more than 1/64 of 100 ms");
        assert!(!applied_timeout_fits(Some(seconds(1)), None), "no timeout is not a long one");
        assert!(!applied_timeout_fits(None, Some(seconds(1))));
    }

    #[test]
    fn percent_decoding_handles_escapes_plus_and_junk() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn base64_decoding_inverts_encoding_and_refuses_junk() {
        for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", &[0, 255, 128, 7]] {
            assert_eq!(base64_decode(&base64_encode(input)).as_deref(), Some(input));
        }
        assert_eq!(base64_decode("Zm8").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zg==="), None);
    }

    #[test]
    fn url_part_decoding_keeps_plus() {
        assert_eq!(percent_decode_url_part("p%40ss+word"), "p@ss+word");
    }

    #[test]
    fn random_alphanumeric_has_the_length_and_alphabet() {
        let value = random_alphanumeric(48);
        assert_eq!(value.len(), 48);
        assert!(value.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_ne!(value, random_alphanumeric(48));
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
