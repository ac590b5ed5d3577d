//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the password exchange PostgreSQL asks for by default.
//!
//! Pure: the caller supplies the nonce and moves the messages; no IO here. Without TLS there is
//! no channel binding, so the client announces `n,,` ("not supported") and sends `c=biws`.

use sha2::{Digest, Sha256};

use crate::util::{base64_decode, base64_encode};

/// HMAC-SHA-256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK_BYTES: usize = 64;
    let mut key_block = [0u8; BLOCK_BYTES];
    if key.len() > BLOCK_BYTES {
        key_block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        key_block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(key_block.map(|byte| byte ^ 0x36));
    inner.update(message);
    let inner_digest = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(key_block.map(|byte| byte ^ 0x5c));
    outer.update(inner_digest);
    outer.finalize().into()
}

/// SCRAM's `Hi()`: PBKDF2 with HMAC-SHA-256, one 32-byte block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first_message = salt.to_vec();
    first_message.extend_from_slice(&1u32.to_be_bytes());
    let mut previous = hmac_sha256(password, &first_message);
    let mut result = previous;
    for _ in 1..iterations {
        previous = hmac_sha256(password, &previous);
        for (accumulated, byte) in result.iter_mut().zip(previous) {
            *accumulated ^= byte;
        }
    }
    result
}

/// One SCRAM-SHA-256 exchange, from the client's first message to the check of the server's
/// signature.
pub struct ScramExchange {
    password: Vec<u8>,
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

/// Iteration counts above this are refused: a hostile or broken server could otherwise make
/// the client spin for minutes (PostgreSQL's default is 4,096).
const MOST_ITERATIONS: u32 = 1_000_000;

impl ScramExchange {
    /// Starts an exchange with `client_nonce` (printable ASCII without commas; random in use).
    ///
    /// The user name is left empty: PostgreSQL takes it from the startup message and ignores
    /// SCRAM's. The password is used as its UTF-8 bytes; SASLprep would change only passwords
    /// with unusual Unicode (compatibility forms, some spaces), and PostgreSQL itself falls back
    /// to the raw bytes for a password that SASLprep rejects.
    pub fn new(password: &str, client_nonce: String) -> ScramExchange {
        let client_first_bare = format!("n=,r={client_nonce}");
        ScramExchange {
            password: password.as_bytes().to_vec(),
            client_nonce,
            client_first_bare,
            expected_server_signature: None,
        }
    }

    /// The client's first message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Reads the server's first message and returns the client's final one (with the proof).
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let mut server_nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", value)) => server_nonce = Some(value),
                Some(("s", value)) => salt = Some(base64_decode(value).ok_or("the server's salt is not base64")?),
                Some(("i", value)) => {
                    iterations = Some(value.parse::<u32>().map_err(|_| "the server's iteration count is not a number")?)
                }
                _ => {}
            }
        }
        let (Some(server_nonce), Some(salt), Some(iterations)) = (server_nonce, salt, iterations) else {
            return Err(format!("the server's first SCRAM message is incomplete: {server_first:?}"));
        };
        if !server_nonce.starts_with(&self.client_nonce) || server_nonce.len() == self.client_nonce.len() {
            return Err("the server's SCRAM nonce does not extend ours".to_owned());
        }
        if iterations == 0 || iterations > MOST_ITERATIONS {
            return Err(format!("the server asks for {iterations} SCRAM iterations"));
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let client_final_without_proof = format!("c=biws,r={server_nonce}");
        let auth_message = format!("{},{server_first},{client_final_without_proof}", self.client_first_bare);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (byte, signature_byte) in proof.iter_mut().zip(client_signature) {
            *byte ^= signature_byte;
        }
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.expected_server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!("{client_final_without_proof},p={}", base64_encode(&proof)))
    }

    /// Checks the server's final message: proof that the server knew the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("the server refused the SCRAM exchange: {error}"));
        }
        let signature = server_final
            .split(',')
            .find_map(|attribute| attribute.strip_prefix("v="))
            .and_then(base64_decode)
            .ok_or("the server's final SCRAM message has no signature")?;
        match self.expected_server_signature {
            Some(expected) if signature == expected => Ok(()),
            _ => Err("the server's SCRAM signature is wrong: it does not know the password".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        // Test case 2 of RFC 4231.
        let digest = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::util::hex(&digest),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let digest = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            crate::util::hex(&digest),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3 (user "user", password
    /// "pencil"), with the user name PostgreSQL leaves empty put back in its messages.
    #[test]
    fn exchange_matches_rfc_7677_example() {
        let mut exchange = ScramExchange::new("pencil", "rOprNGfwEbeRWgbNEkqO".to_owned());
        exchange.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".to_owned();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = exchange.client_final(server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        exchange.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(exchange.verify_server_final("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err());
        assert!(exchange.verify_server_final("e=invalid-proof").unwrap_err().contains("invalid-proof"));
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_ours_is_refused() {
        let mut exchange = ScramExchange::new("pencil", "abc".to_owned());
        assert!(exchange.client_final("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096").is_err());
        assert!(exchange.client_final("r=abc,s=QSXCR+Q6sek8bf92,i=4096").is_err());
        assert!(exchange.client_final("r=abcdef,s=QSXCR+Q6sek8bf92,i=0").is_err());
        assert!(exchange.client_final("r=abcdef,s=QSXCR+Q6sek8bf92").is_err());
        assert!(exchange.client_final("r=abcdef,s=QSXCR+Q6sek8bf92,i=4096").is_ok());
    }
}
