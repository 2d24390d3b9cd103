//! A string kept inline when short, for the two kinds every idle connection holds one
//! of: its client id and its subscription's levels in the router. Most are short
//! (`sensor-0042`, a MAC address, a number), and a separate allocation for each took
//! a 32- or 48-byte block beside the 24 bytes it is referenced from. Up to 22 bytes
//! live in those 24 bytes; a longer one is shared, so a clone never copies it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

#[derive(Clone)]
pub struct SmallStr(Repr);

/// Private, so that an `Inline` is only ever made from a `str` of at most
/// [`SmallStr::INLINE`] bytes: [`SmallStr::as_str`] relies on it.
#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; SmallStr::INLINE],
    },
    Shared(Arc<str>),
}

impl SmallStr {
    /// The longest string kept inline.
    pub const INLINE: usize = 22;

    pub fn new(s: &str) -> SmallStr {
        if s.len() <= SmallStr::INLINE {
            let mut bytes = [0; SmallStr::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            SmallStr(Repr::Shared(s.into()))
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).expect("copied from a str")
            }
            Repr::Shared(s) => s,
        }
    }
}

impl Deref for SmallStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SmallStr {
    fn from(s: &str) -> SmallStr {
        SmallStr::new(s)
    }
}

impl From<String> for SmallStr {
    fn from(s: String) -> SmallStr {
        SmallStr::new(&s)
    }
}

impl Borrow<str> for SmallStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Hashes as the `str` it holds, so a map keyed by it is searched with a `&str`.
impl Hash for SmallStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &SmallStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallStr {}

impl PartialEq<str> for SmallStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Display for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

impl fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inline_long_shared_both_equal_as_str() {
        assert_eq!(size_of::<SmallStr>(), 24);
        assert_eq!(size_of::<Option<SmallStr>>(), 24);
        let short = "s".repeat(SmallStr::INLINE);
        let long = "l".repeat(SmallStr::INLINE + 1);
        assert!(matches!(SmallStr::new(&short).0, Repr::Inline { .. }));
        assert!(matches!(SmallStr::new(&long).0, Repr::Shared(_)));
        for s in ["", "a", &short, &long, "ünïcödé"] {
            let small = SmallStr::new(s);
            assert_eq!(&*small, s);
            assert_eq!(small, SmallStr::from(s.to_string()));
            assert_eq!(format!("{small}"), s);
        }
        let mut map = std::collections::HashMap::new();
        map.insert(SmallStr::new(&long), 1);
        map.insert(SmallStr::new("dev-1"), 2);
        assert_eq!(
            (map.get(long.as_str()), map.get("dev-1")),
            (Some(&1), Some(&2))
        );
    }
}
