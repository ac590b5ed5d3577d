//! MySQL's password proofs: `mysql_native_password` (SHA-1), `caching_sha2_password` (SHA-256)
//! and, for the latter's first login over plain TCP, the password encrypted with the server's
//! RSA key (OAEP with SHA-1, as the server decrypts it). Pure: no IO.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::util::base64_decode;

/// `mysql_native_password`: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))).
pub fn native_password_proof(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let password_hash = Sha1::digest(password.as_bytes());
    let double_hash = Sha1::digest(password_hash);
    let mut salted = Sha1::new();
    salted.update(nonce);
    salted.update(double_hash);
    let salted = salted.finalize();
    password_hash.iter().zip(salted).map(|(left, right)| left ^ right).collect()
}

/// `caching_sha2_password`'s fast proof: SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce).
pub fn caching_sha2_proof(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let password_hash = Sha256::digest(password.as_bytes());
    let double_hash = Sha256::digest(password_hash);
    let mut salted = Sha256::new();
    salted.update(double_hash);
    salted.update(nonce);
    let salted = salted.finalize();
    password_hash.iter().zip(salted).map(|(left, right)| left ^ right).collect()
}

/// The password for a full `caching_sha2_password` login over plain TCP: (password + NUL) XOR
/// the nonce (repeated), encrypted with the server's RSA public key (PEM, as the server sends it)
/// using OAEP padding with SHA-1. `seed` is OAEP's 20 random bytes.
pub fn encrypt_password(password: &str, nonce: &[u8], public_key_pem: &str, seed: [u8; 20]) -> Result<Vec<u8>, String> {
    let key = RsaPublicKey::from_pem(public_key_pem)?;
    let mut message: Vec<u8> = password.bytes().chain([0]).collect();
    if !nonce.is_empty() {
        for (index, byte) in message.iter_mut().enumerate() {
            *byte ^= nonce[index % nonce.len()];
        }
    }
    key.encrypt_oaep_sha1(&message, seed)
}

/// An RSA public key: modulus and exponent as big-endian bytes.
struct RsaPublicKey {
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl RsaPublicKey {
    /// Reads `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) or `-----BEGIN RSA PUBLIC
    /// KEY-----` (PKCS #1).
    fn from_pem(pem: &str) -> Result<RsaPublicKey, String> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("-----"))
            .collect();
        let der = base64_decode(&body).ok_or("the server's public key is not base64 PEM")?;
        let mut outer = DerReader { rest: &der };
        let mut sequence = outer.element(0x30)?;
        let first = sequence.peek_tag();
        let mut key_sequence = if first == Some(0x30) {
            // SubjectPublicKeyInfo: the algorithm, then the PKCS #1 key inside a BIT STRING.
            sequence.element(0x30)?;
            let bit_string = sequence.element(0x03)?;
            let (unused_bits, key) = bit_string.rest.split_first().ok_or("an empty key BIT STRING")?;
            if *unused_bits != 0 {
                return Err("a key BIT STRING with unused bits".to_owned());
            }
            DerReader { rest: key }.element(0x30)?
        } else {
            sequence
        };
        let modulus = strip_leading_zeros(key_sequence.element(0x02)?.rest).to_vec();
        let exponent = strip_leading_zeros(key_sequence.element(0x02)?.rest).to_vec();
        if modulus.len() < 64 || exponent.is_empty() {
            return Err("the server's RSA key is too small".to_owned());
        }
        Ok(RsaPublicKey { modulus, exponent })
    }

    /// RSAES-OAEP-ENCRYPT (RFC 8017, section 7.1.1) with SHA-1 and MGF1-SHA-1, empty label.
    fn encrypt_oaep_sha1(&self, message: &[u8], seed: [u8; 20]) -> Result<Vec<u8>, String> {
        const HASH_BYTES: usize = 20;
        let key_bytes = self.modulus.len();
        if message.len() + 2 * HASH_BYTES + 2 > key_bytes {
            return Err("the password is too long for the server's RSA key".to_owned());
        }
        let mut data_block = Sha1::digest(b"").to_vec();
        data_block.resize(key_bytes - message.len() - HASH_BYTES - 2, 0);
        data_block.push(1);
        data_block.extend_from_slice(message);
        for (byte, mask) in data_block.iter_mut().zip(mgf1_sha1(&seed, key_bytes - HASH_BYTES - 1)) {
            *byte ^= mask;
        }
        let mut masked_seed = seed;
        for (byte, mask) in masked_seed.iter_mut().zip(mgf1_sha1(&data_block, HASH_BYTES)) {
            *byte ^= mask;
        }
        let mut encoded = vec![0u8];
        encoded.extend_from_slice(&masked_seed);
        encoded.extend_from_slice(&data_block);
        let modulus = Natural::from_be_bytes(&self.modulus);
        let ciphertext = Natural::from_be_bytes(&encoded).power_modulo(&Natural::from_be_bytes(&self.exponent), &modulus);
        Ok(ciphertext.to_be_bytes(key_bytes))
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// MGF1 with SHA-1 (RFC 8017, appendix B.2.1).
fn mgf1_sha1(seed: &[u8], length: usize) -> Vec<u8> {
    let mut mask = Vec::with_capacity(length + 20);
    let mut counter: u32 = 0;
    while mask.len() < length {
        let mut hash = Sha1::new();
        hash.update(seed);
        hash.update(counter.to_be_bytes());
        mask.extend_from_slice(&hash.finalize());
        counter += 1;
    }
    mask.truncate(length);
    mask
}

/// Reads DER elements in order (only what a public key needs: definite lengths).
struct DerReader<'der> {
    rest: &'der [u8],
}

impl<'der> DerReader<'der> {
    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element, which must have tag `tag`; returns a reader over its contents.
    fn element(&mut self, tag: u8) -> Result<DerReader<'der>, String> {
        let malformed = || "the server's public key is not valid DER".to_owned();
        let (&found, rest) = self.rest.split_first().ok_or_else(malformed)?;
        if found != tag {
            return Err(malformed());
        }
        let (&first_length, mut rest) = rest.split_first().ok_or_else(malformed)?;
        let length = if first_length < 0x80 {
            first_length as usize
        } else {
            let count = (first_length & 0x7f) as usize;
            if count == 0 || count > 4 || rest.len() < count {
                return Err(malformed());
            }
            let length = rest[..count].iter().fold(0usize, |length, byte| length << 8 | *byte as usize);
            rest = &rest[count..];
            length
        };
        if rest.len() < length {
            return Err(malformed());
        }
        let (contents, rest) = rest.split_at(length);
        self.rest = rest;
        Ok(DerReader { rest: contents })
    }
}

/// A non-negative integer as little-endian 32-bit limbs: just enough arithmetic for one RSA
/// public-key operation per login (square and multiply, reduction by shift and subtract).
/// Speed does not matter here, and the exponent and modulus are public.
#[derive(Clone, Debug, PartialEq)]
struct Natural {
    limbs: Vec<u32>,
}

impl Natural {
    fn from_be_bytes(bytes: &[u8]) -> Natural {
        let mut limbs: Vec<u32> = bytes
            .rchunks(4)
            .map(|chunk| chunk.iter().fold(0u32, |limb, byte| limb << 8 | *byte as u32))
            .collect();
        trim(&mut limbs);
        Natural { limbs }
    }

    /// Big-endian bytes, left-padded with zeros to `length` (which must be large enough).
    fn to_be_bytes(&self, length: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; length];
        for (index, limb) in self.limbs.iter().enumerate() {
            for (byte_index, byte) in limb.to_le_bytes().into_iter().enumerate() {
                let position = index * 4 + byte_index;
                if position < length {
                    bytes[length - 1 - position] = byte;
                }
            }
        }
        bytes
    }

    fn bit_length(&self) -> usize {
        match self.limbs.last() {
            Some(top) => self.limbs.len() * 32 - top.leading_zeros() as usize,
            None => 0,
        }
    }

    fn bit(&self, index: usize) -> bool {
        self.limbs.get(index / 32).is_some_and(|limb| limb >> (index % 32) & 1 == 1)
    }

    fn multiply(&self, other: &Natural) -> Natural {
        let mut product = vec![0u32; self.limbs.len() + other.limbs.len()];
        for (left_index, left) in self.limbs.iter().enumerate() {
            let mut carry: u64 = 0;
            for (right_index, right) in other.limbs.iter().enumerate() {
                let slot = &mut product[left_index + right_index];
                let sum = *slot as u64 + *left as u64 * *right as u64 + carry;
                *slot = sum as u32;
                carry = sum >> 32;
            }
            product[left_index + other.limbs.len()] = carry as u32;
        }
        trim(&mut product);
        Natural { limbs: product }
    }

    /// `self` mod `modulus`, one bit at a time from the top.
    fn modulo(&self, modulus: &Natural) -> Natural {
        let mut remainder = Natural { limbs: Vec::new() };
        for index in (0..self.bit_length()).rev() {
            remainder.shift_left_one(self.bit(index));
            if !remainder.less_than(modulus) {
                remainder.subtract(modulus);
            }
        }
        remainder
    }

    fn shift_left_one(&mut self, low_bit: bool) {
        let mut carry = low_bit as u32;
        for limb in &mut self.limbs {
            let next_carry = *limb >> 31;
            *limb = *limb << 1 | carry;
            carry = next_carry;
        }
        if carry != 0 {
            self.limbs.push(carry);
        }
    }

    fn less_than(&self, other: &Natural) -> bool {
        if self.limbs.len() != other.limbs.len() {
            return self.limbs.len() < other.limbs.len();
        }
        for (left, right) in self.limbs.iter().rev().zip(other.limbs.iter().rev()) {
            if left != right {
                return left < right;
            }
        }
        false
    }

    /// `self -= other`, for `other <= self`.
    fn subtract(&mut self, other: &Natural) {
        let mut borrow = 0i64;
        for (index, limb) in self.limbs.iter_mut().enumerate() {
            let difference = *limb as i64 - other.limbs.get(index).copied().unwrap_or(0) as i64 - borrow;
            borrow = (difference < 0) as i64;
            *limb = difference.rem_euclid(1 << 32) as u32;
        }
        trim(&mut self.limbs);
    }

    /// `self ^ exponent mod modulus`, left-to-right square and multiply.
    fn power_modulo(&self, exponent: &Natural, modulus: &Natural) -> Natural {
        let base = self.modulo(modulus);
        let mut result = Natural { limbs: vec![1] }.modulo(modulus);
        for index in (0..exponent.bit_length()).rev() {
            result = result.multiply(&result).modulo(modulus);
            if exponent.bit(index) {
                result = result.multiply(&base).modulo(modulus);
            }
        }
        result
    }
}

fn trim(limbs: &mut Vec<u32>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::hex;

    fn hex_bytes(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap()).collect()
    }

    #[test]
    fn native_proof_matches_the_server_formula() {
        // SELECT SHA1(UNHEX(SHA1('secret'))) on MariaDB is the stored hash; the proof XORed
        // with SHA1(nonce + stored) gives SHA1(password) back, which hashes to the stored value.
        let nonce = b"abcdefghij0123456789";
        let proof = native_password_proof("secret", nonce);
        let stored = hex_bytes("14e65567abdb5135d0cfd9a70b3032c179a49ee7");
        let mut salted = Sha1::new();
        salted.update(nonce);
        salted.update(&stored);
        let recovered: Vec<u8> = proof.iter().zip(salted.finalize()).map(|(left, right)| left ^ right).collect();
        assert_eq!(hex(&Sha1::digest(&recovered)), "14e65567abdb5135d0cfd9a70b3032c179a49ee7");
        assert!(native_password_proof("", nonce).is_empty());
    }

    #[test]
    fn caching_sha2_proof_recovers_the_password_hash() {
        let nonce = b"abcdefghij0123456789";
        let proof = caching_sha2_proof("secret", nonce);
        let double_hash = Sha256::digest(Sha256::digest(b"secret"));
        let mut salted = Sha256::new();
        salted.update(double_hash);
        salted.update(nonce);
        let recovered: Vec<u8> = proof.iter().zip(salted.finalize()).map(|(left, right)| left ^ right).collect();
        assert_eq!(recovered, Sha256::digest(b"secret").to_vec());
    }

    /// Both proofs as PyMySQL 2.2 (an independent client, widely used against MySQL 8) computes
    /// them: `_auth.scramble_native_password` and `_auth.scramble_caching_sha2`.
    #[test]
    fn proofs_match_an_independent_client() {
        let nonce = b"abcdefghij0123456789";
        assert_eq!(hex(&native_password_proof("secret", nonce)), "99db25ccb2a625f0e7cf4ce2e895ef9609dfe5e4");
        assert_eq!(hex(&caching_sha2_proof("secret", nonce)), "bd7d89fc1c297010da753d08822e9e48d3eafbb6e68e1f9b403be12dc5687a40");
    }

    /// The RSA path's output for a fixed seed, checked outside this code once: OpenSSL's
    /// RSA-OAEP with SHA-1 (Python's `cryptography` 51, with the test key's private half) decrypts
    /// it to the password and its NUL XORed with the nonce, the same plaintext it gets from
    /// PyMySQL's `_auth.sha2_rsa_encrypt` for the same password, nonce and key.
    #[test]
    fn password_encryption_is_what_openssl_decrypts() {
        let ciphertext = encrypt_password("pässword", b"0123456789abcdefghij", TEST_PUBLIC_KEY_PEM, [7; 20]).unwrap();
        assert_eq!(
            hex(&ciphertext),
            "7fd002d3d378524602b4167f8bcc3a762f8675222b7f02b76a6f7b837f93b1dffefa44176afaea634c18d33b6394dfa2\
             0f9846e86f25d11af41e595fa39b085f096c53aca4076186ec55534a9c8e0dbf1c0344ec98dda5a8e71cde09f9e82651\
             7c2c3d8bec84aea01b799de17b6ebdd32db2eda4c738b5131b4e78c446f627bb"
        );
    }

    #[test]
    fn arithmetic_matches_small_known_values() {
        let modulus = Natural::from_be_bytes(&3233u32.to_be_bytes());
        // The textbook RSA example: n = 61 * 53, e = 17, d = 2753, m = 65 -> c = 2790.
        let ciphertext = Natural::from_be_bytes(&[65]).power_modulo(&Natural::from_be_bytes(&[17]), &modulus);
        assert_eq!(ciphertext.to_be_bytes(2), 2790u16.to_be_bytes());
        let plain = ciphertext.power_modulo(&Natural::from_be_bytes(&2753u16.to_be_bytes()), &modulus);
        assert_eq!(plain.to_be_bytes(1), [65]);
        let big = Natural::from_be_bytes(&[0xff; 40]);
        assert_eq!(big.multiply(&Natural::from_be_bytes(&[1])), big);
        assert_eq!(big.modulo(&big).limbs, Vec::<u32>::new());
    }

    /// A 1024-bit key made with `openssl genrsa 1024` for this test only: the password is
    /// encrypted with the public key, then decrypted with the private exponent and the OAEP
    /// encoding undone by hand, as the server does.
    #[test]
    fn password_encryption_decrypts_with_the_private_key() {
        let nonce = b"0123456789abcdefghij";
        let ciphertext = encrypt_password("pässword", nonce, TEST_PUBLIC_KEY_PEM, [7; 20]).unwrap();
        let key = RsaPublicKey::from_pem(TEST_PUBLIC_KEY_PEM).unwrap();
        assert_eq!(ciphertext.len(), key.modulus.len());
        let modulus = Natural::from_be_bytes(&key.modulus);
        let encoded = Natural::from_be_bytes(&ciphertext)
            .power_modulo(&Natural::from_be_bytes(&hex_bytes(TEST_PRIVATE_EXPONENT_HEX)), &modulus)
            .to_be_bytes(key.modulus.len());
        assert_eq!(encoded[0], 0);
        let (masked_seed, masked_block) = encoded[1..].split_at(20);
        let seed: Vec<u8> = masked_seed.iter().zip(mgf1_sha1(masked_block, 20)).map(|(left, right)| left ^ right).collect();
        assert_eq!(seed, [7; 20]);
        let block: Vec<u8> =
            masked_block.iter().zip(mgf1_sha1(&seed, masked_block.len())).map(|(left, right)| left ^ right).collect();
        assert_eq!(&block[..20], Sha1::digest(b"").as_slice());
        let start = block[20..].iter().position(|byte| *byte == 1).unwrap() + 21;
        let message: Vec<u8> = block[start..].iter().enumerate().map(|(index, byte)| byte ^ nonce[index % 20]).collect();
        assert_eq!(message, "pässword\0".as_bytes());
        assert!(encrypt_password(&"x".repeat(100), nonce, TEST_PUBLIC_KEY_PEM, [7; 20]).is_err());
        assert!(encrypt_password("p", nonce, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", [7; 20]).is_err());
    }

    const TEST_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0vBAnwKFgUr3EKpw6H4D+ylwF\n\
lYtKOR5jJQ/VYtok9UUXPQBWzc6gROiVifNl47nK7Cm4FELL6efSE8zengGPm2Xh\n\
w5spkl7q2jxqGAjGTUH+XEu7kjeWti6rWqxrNSNGryrDX83BiBgcbAnW9BYjPJxJ\n\
JQ7BjE8lvuUqbI8UewIDAQAB\n\
-----END PUBLIC KEY-----";
    const TEST_PRIVATE_EXPONENT_HEX: &str = "643555bbc4c9752fcb39e5ea432bce88f6c838ec66939bc1e674d927962c9f8b4268951108100a7dc05738fa88f2b865\
        fe461d078c6c50c57b1c769003ea95b00c44487014e4286de1f09b44ab22460edfe007f89368823a5c985e0582257758\
        fe6d1fc3a55b703f8e00f130474373c2eaeab6ef1e911ad181178b9c83d60cf1";
}
