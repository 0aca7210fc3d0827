//! Password hashes and password files.
//!
//! Accepted hash formats, so existing Mosquitto password files work as
//! they are:
//! - argon2id PHC strings (`$argon2id$v=19$m=...`), what Starling writes;
//! - Mosquitto 2.x `$7$<iterations>$<salt b64>$<hash b64>` (PBKDF2-HMAC-SHA512);
//! - Mosquitto 1.x `$6$<salt b64>$<hash b64>` (salted SHA-512).
//!
//! Comparisons of derived keys are constant-time.

use std::collections::BTreeMap;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (any accepted format). An
/// unrecognised or corrupt hash never matches.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$argon2") {
        return PasswordHash::new(hash)
            .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok());
    }
    if let Some(rest) = hash.strip_prefix("$7$") {
        let mut parts = rest.splitn(3, '$');
        let (Some(iter), Some(salt), Some(expected)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(iter), Ok(salt), Ok(expected)) =
            (iter.parse::<u32>(), B64.decode(salt), B64.decode(expected))
        else {
            return false;
        };
        if iter == 0 || expected.is_empty() || expected.len() > 128 {
            return false;
        }
        let mut out = vec![0u8; expected.len()];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iter, &mut out);
        return bool::from(out.ct_eq(&expected));
    }
    if let Some(rest) = hash.strip_prefix("$6$") {
        let Some((salt, expected)) = rest.split_once('$') else { return false };
        let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(expected)) else { return false };
        let mut h = Sha512::new();
        h.update(password);
        h.update(&salt);
        return bool::from(h.finalize().as_slice().ct_eq(&expected));
    }
    false
}

/// A Mosquitto-style password file: `username:hash` per line; blank lines
/// and `#` comments ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    pub users: BTreeMap<String, String>,
}

impl PasswordFile {
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected username:hash", i + 1));
            };
            if user.is_empty() {
                return Err(format!("line {}: empty username", i + 1));
            }
            if !(hash.starts_with("$argon2") || hash.starts_with("$7$") || hash.starts_with("$6$")) {
                return Err(format!(
                    "line {}: unsupported hash for user {user} (argon2id, $7$ or $6$ expected)",
                    i + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(PasswordFile { users })
    }

    pub fn load(path: &Path) -> Result<PasswordFile, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_text(&self) -> String {
        self.users.iter().map(|(u, h)| format!("{u}:{h}\n")).collect()
    }

    /// Writes the file atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, b"s3cret"));
        assert!(!verify_password(&h, b"s3cret!"));
    }

    #[test]
    fn mosquitto_pbkdf2_sha512_hash_is_accepted() {
        // Built the way mosquitto_passwd 2.0 does: PBKDF2-HMAC-SHA512,
        // 101 iterations, 12-byte salt, 64-byte key.
        let salt = b"0123456789ab";
        let mut key = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(b"hunter2", salt, 101, &mut key);
        let line = format!("$7$101${}${}", B64.encode(salt), B64.encode(key));
        assert!(verify_password(&line, b"hunter2"));
        assert!(!verify_password(&line, b"hunter3"));
        assert!(!verify_password("$7$0$AAAA$AAAA", b"x"));
        assert!(!verify_password("$7$nope", b"x"));
    }

    #[test]
    fn mosquitto_sha512_hash_is_accepted() {
        let salt = b"saltsalt";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let line = format!("$6${}${}", B64.encode(salt), B64.encode(h.finalize()));
        assert!(verify_password(&line, b"pw"));
        assert!(!verify_password(&line, b"pW"));
    }

    #[test]
    fn password_file_parse_and_errors() {
        let f = PasswordFile::parse(
            "# users\nalice:$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA\n\nbob:$7$101$YQ==$Yg==\n",
        )
        .unwrap();
        assert_eq!(f.users.len(), 2);
        assert!(PasswordFile::parse("no-colon").unwrap_err().contains("line 1"));
        assert!(PasswordFile::parse("carol:plaintext").unwrap_err().contains("unsupported hash"));
        assert_eq!(PasswordFile::parse(&f.to_text()).unwrap(), f);
    }
}
