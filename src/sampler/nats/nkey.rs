//! NATS nkeys: a user's seed (the `SU…` text `nk -gen user` prints and a `.creds` file holds)
//! decoded, its public key derived, and the server's nonce signed with it (Ed25519, as the NATS
//! protocol's CONNECT asks); and the JWT and seed read out of a `.creds` file.

use crate::sampler::slot::crc16;
use base64::Engine;
use data_encoding::BASE32_NOPAD;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The nkey prefix bytes: a seed, and a user's key.
const SEED: u8 = 18 << 3;
const USER: u8 = 20 << 3;

/// A user's key pair.
pub struct UserKey {
    pair: Ed25519KeyPair,
    /// The `U…` public key the server knows the user by.
    pub public: String,
}

impl UserKey {
    pub fn from_seed(seed: &str) -> Result<Self, String> {
        let raw = BASE32_NOPAD.decode(seed.trim().as_bytes()).map_err(|_| {
            "it is not an nkey seed: a user seed is base32 text starting with SU (nk -gen user)".to_string()
        })?;
        if raw.len() != 36 {
            return Err(format!(
                "it is not an nkey seed: {} bytes decoded where a seed has 36",
                raw.len()
            ));
        }
        let (body, checksum) = raw.split_at(34);
        if crc16(body) != u16::from_le_bytes([checksum[0], checksum[1]]) {
            return Err("the nkey seed's checksum does not match: it was cut or mistyped".into());
        }
        if body[0] & 0xf8 != SEED {
            return Err("it is an nkey public key, not a seed: give the seed (starting with SU)".into());
        }
        let kind = ((body[0] & 0x07) << 5) | ((body[1] & 0xf8) >> 3);
        if kind != USER {
            return Err(
                "it is the seed of an account or operator: levee connects as a user, with a seed starting with SU"
                    .into(),
            );
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&body[2..34])
            .map_err(|_| "the nkey seed is not an Ed25519 key".to_string())?;
        let mut public = vec![USER];
        public.extend_from_slice(pair.public_key().as_ref());
        let checksum = crc16(&public);
        public.extend_from_slice(&checksum.to_le_bytes());
        Ok(Self {
            public: BASE32_NOPAD.encode(&public),
            pair,
        })
    }

    /// The server's nonce signed, as CONNECT's `sig` carries it (base64url, unpadded).
    pub fn sign(&self, nonce: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.pair.sign(nonce).as_ref())
    }
}

/// The user JWT and the seed of a `.creds` file (as `nsc generate creds` writes it: each between
/// its `-----BEGIN …-----` and `------END …------` lines).
pub fn parse_creds(text: &str) -> Result<(String, String), String> {
    let after = |marker: &str| {
        let mut lines = text.lines().skip_while(|line| !line.contains(marker));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(str::to_string)
    };
    let jwt = after("BEGIN NATS USER JWT")
        .ok_or("no -----BEGIN NATS USER JWT----- block: it is not a .creds file")?;
    let seed = after("BEGIN USER NKEY SEED")
        .ok_or("no -----BEGIN USER NKEY SEED----- block: the .creds file holds no seed")?;
    Ok((jwt, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed made of a known key, encoded the way nkeys does.
    fn seed_of(kind: u8, raw: &[u8; 32]) -> String {
        let mut bytes = vec![SEED | (kind >> 5), (kind & 31) << 3];
        bytes.extend_from_slice(raw);
        let checksum = crc16(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        BASE32_NOPAD.encode(&bytes)
    }

    #[test]
    fn the_crc_is_xmodems() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn a_user_seed_gives_a_u_key_and_a_verifiable_signature() {
        let seed = seed_of(USER, &[7; 32]);
        assert!(seed.starts_with("SU"), "{seed}");
        let key = UserKey::from_seed(&seed).unwrap();
        assert!(key.public.starts_with('U'), "{}", key.public);
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.sign(b"nonce"))
            .unwrap();
        let public = BASE32_NOPAD.decode(key.public.as_bytes()).unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public[1..33])
            .verify(b"nonce", &signature)
            .unwrap();
    }

    #[test]
    fn a_broken_or_foreign_seed_says_what_it_is() {
        let mut seed = seed_of(USER, &[7; 32]);
        seed.replace_range(10..11, if &seed[10..11] == "A" { "B" } else { "A" });
        assert!(UserKey::from_seed(&seed).err().unwrap().contains("checksum"));
        let account = seed_of(0, &[7; 32]);
        assert!(
            UserKey::from_seed(&account)
                .err()
                .unwrap()
                .contains("account or operator")
        );
        assert!(
            UserKey::from_seed("hunter2")
                .err()
                .unwrap()
                .contains("not an nkey seed")
        );
    }

    #[test]
    fn a_creds_file_yields_its_jwt_and_seed() {
        let creds = "-----BEGIN NATS USER JWT-----\neyJ0.eyJq.sig\n------END NATS USER JWT------\n\n\
                     ************************* IMPORTANT *************************\n\n\
                     -----BEGIN USER NKEY SEED-----\nSUAB\n------END USER NKEY SEED------\n";
        assert_eq!(
            parse_creds(creds).unwrap(),
            ("eyJ0.eyJq.sig".into(), "SUAB".into())
        );
        assert!(parse_creds("SUAB").is_err());
    }
}
