//! Who may connect and what they may do: Mosquitto-compatible password files and ACL
//! files, per listener, reloadable on SIGHUP without dropping anyone.

pub mod acl;
pub mod password;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub use acl::{Access, Acl};
pub use password::PasswordFile;

/// One listener's authentication and authorization settings, as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthSettings {
    pub allow_anonymous: bool,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
}

/// The loaded rules of one listener. Reloading swaps them whole; a file that fails to
/// parse leaves the previous rules in force.
pub struct AuthPolicy {
    pub settings: AuthSettings,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    acl: RwLock<Option<Arc<Acl>>>,
}

impl AuthPolicy {
    pub fn load(settings: AuthSettings) -> Result<AuthPolicy, String> {
        let passwords = settings
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?
            .map(Arc::new);
        let acl = settings
            .acl_file
            .as_deref()
            .map(Acl::load)
            .transpose()?
            .map(Arc::new);
        Ok(AuthPolicy {
            settings,
            passwords: RwLock::new(passwords),
            acl: RwLock::new(acl),
        })
    }

    /// Allows everyone everything: for tests and embedding.
    pub fn open() -> AuthPolicy {
        AuthPolicy::load(AuthSettings {
            allow_anonymous: true,
            ..AuthSettings::default()
        })
        .expect("no files to read")
    }

    pub fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.passwords
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again; returns the errors of those that could not be used.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(path) = &self.settings.password_file {
            match PasswordFile::load(path) {
                Ok(p) => {
                    *self.passwords.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(p))
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(path) = &self.settings.acl_file {
            match Acl::load(path) {
                Ok(a) => *self.acl.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(a)),
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}
