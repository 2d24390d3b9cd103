//! Password files in the format Mosquitto's `mosquitto_passwd` writes, so a Pi moving
//! from Mosquitto keeps its file: `user:$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512,
//! base64) and, for reading, the older `user:$6$SALT$HASH` (SHA-512 of password then
//! salt, Mosquitto's own scheme rather than crypt(3)) and `user:$argon2id$...` PHC
//! strings.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// What `tern passwd` writes: Mosquitto 2.0's defaults, so Mosquitto reads it too.
const ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// A PHC string, checked by the argon2 crate.
    Argon2id(String),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2id$") {
            let phc = argon2::PasswordHash::new(text).map_err(|e| format!("argon2id hash: {e}"))?;
            if phc.salt.is_none() || phc.hash.is_none() {
                return Err("argon2id hash has no salt or no hash part".into());
            }
            return Ok(Hash::Argon2id(text.to_owned()));
        }
        let decode = |part: &str, what: &str| {
            B64.decode(part)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("iteration count {iterations:?} is not a number"))?;
                if iterations == 0 {
                    return Err("iteration count is 0".into());
                }
                Ok(Hash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode(salt, "salt")?,
                    hash: decode(hash, "hash")?,
                })
            }
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: decode(salt, "salt")?,
                hash: decode(hash, "hash")?,
            }),
            _ => Err(
                "password hash is none of $7$ (PBKDF2-SHA512), $6$ (SHA-512), $argon2id$".into(),
            ),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        use argon2::PasswordVerifier;
        let computed = match self {
            Hash::Argon2id(phc) => {
                // Parsed once already in `parse`; the verifier compares in constant time.
                return argon2::PasswordHash::new(phc).is_ok_and(|hash| {
                    argon2::Argon2::default()
                        .verify_password(password, &hash)
                        .is_ok()
                });
            }
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
            Hash::Sha512 { salt, .. } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                h.finalize().to_vec()
            }
        };
        let stored = match self {
            Hash::Pbkdf2Sha512 { hash, .. } | Hash::Sha512 { hash, .. } => hash,
            Hash::Argon2id(_) => unreachable!("returned above"),
        };
        computed.len() == stored.len() && bool::from(computed.ct_eq(stored))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    /// Parses a password file; an error names the line and what was wrong with it.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected USER:HASH", n + 1))?;
            if user.is_empty() {
                return Err(format!("line {}: empty user name", n + 1));
            }
            let hash =
                Hash::parse(hash).map_err(|e| format!("line {}: user {user:?}: {e}", n + 1))?;
            users.insert(user.to_owned(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn load(path: &Path) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether `user` exists and `password` is theirs. Unknown users cost the same
    /// hash as known ones, so timing does not tell which names exist.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                let decoy = Hash::Pbkdf2Sha512 {
                    iterations: ITERATIONS,
                    salt: vec![0; SALT_LEN],
                    hash: vec![0; 64],
                };
                let _ = decoy.verify(password);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A `$7$` line's hash part for `password` with a fresh random salt.
pub fn hash_password(password: &[u8]) -> std::io::Result<String> {
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, ITERATIONS, &mut out);
    Ok(format!(
        "$7${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Adds or replaces `user` in the password file at `path` (created if missing),
/// keeping every other line as it was; the file is replaced atomically.
pub fn set_password(path: &Path, user: &str, password: &[u8]) -> Result<(), String> {
    if user.is_empty() || user.contains(':') {
        return Err(format!(
            "user name {user:?} must be non-empty and free of ':'"
        ));
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let hash = hash_password(password).map_err(|e| format!("cannot read random bytes: {e}"))?;
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in existing.lines() {
        if line.split_once(':').is_some_and(|(u, _)| u == user) {
            lines.push(format!("{user}:{hash}"));
            replaced = true;
        } else {
            lines.push(line.to_owned());
        }
    }
    if !replaced {
        lines.push(format!("{user}:{hash}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    replace_keeping_owner(path, text.as_bytes())
}

/// Replaces the file at `path` with `contents` through a rename, so that a broker
/// reading it sees the old or the new file, never half of one. The new file keeps the
/// old one's mode and owner: the Debian package's `/etc/tern/passwd` is root:tern
/// 0640, and `sudo tern passwd` must leave it readable by the broker and nobody else.
/// A new file gets 0640.
fn replace_keeping_owner(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let old = std::fs::metadata(path).ok();
    let mode = old.as_ref().map_or(0o640, |m| m.mode() & 0o7777);
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(old) = &old {
            // Only root may give a file away; anyone else keeps their own.
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(e);
                }
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: cannot replace: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by Debian's mosquitto_passwd 2.0.11: alice/secret1.
    const MOSQUITTO_LINE: &str = "alice:$7$101$0hnVttihzZfEw5h1$3cvkkzf0r1H4q9wcTSsPR/3gmY4Lin34dngMAIVQ5HHuazZfdq20oqsv7jQWh3JL/7BiGDN5tssaNmZpKgfNSA==";

    #[test]
    fn reads_mosquitto_passwd_output() {
        let f = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
        assert!(f.check("alice", b"secret1"));
        assert!(!f.check("alice", b"secret2"));
        assert!(!f.check("mallory", b"secret1"));
    }

    #[test]
    fn reads_the_older_sha512_scheme() {
        let salt = b"0123456789ab";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let line = format!("bob:$6${}${}", B64.encode(salt), B64.encode(h.finalize()));
        let f = PasswordFile::parse(&line).unwrap();
        assert!(f.check("bob", b"pw"));
        assert!(!f.check("bob", b"PW"));
    }

    #[test]
    fn reads_argon2id_lines() {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = argon2::Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(phc.starts_with("$argon2id$"));
        let f = PasswordFile::parse(&format!("eve:{phc}")).unwrap();
        assert!(f.check("eve", b"pw"));
        assert!(!f.check("eve", b"pw2"));
        assert!(PasswordFile::parse("eve:$argon2id$garbage").is_err());
    }

    #[test]
    fn round_trips_its_own_hashes() {
        let line = format!("carol:{}", hash_password(b"x y:z").unwrap());
        assert!(PasswordFile::parse(&line).unwrap().check("carol", b"x y:z"));
    }

    #[test]
    fn set_password_keeps_the_files_mode_and_makes_new_files_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tern-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.join("fresh");
        set_password(&fresh, "alice", b"pw").unwrap();
        assert_eq!(mode(&fresh), 0o640);
        let shared = dir.join("shared");
        std::fs::write(&shared, "bob:$7$101$AAAA$BBBB\n").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o604)).unwrap();
        set_password(&shared, "alice", b"pw").unwrap();
        assert_eq!(mode(&shared), 0o604);
        let text = std::fs::read_to_string(&shared).unwrap();
        assert!(
            text.starts_with("bob:") && text.contains("\nalice:$7$"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_line() {
        let err = PasswordFile::parse("# c\nalice:$7$101$AAAA$BBBB\nbob\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = PasswordFile::parse("alice:$5$x$y\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("alice"), "{err}");
    }
}
