//! A copy of a person's name in the person's own slot, when it is short.
//!
//! The name itself is an `Arc<str>` that the feed and the history share, so
//! a change clones a reference instead of allocating. Reading it is a
//! second random read: finding a person by name compared against it, and a
//! device's owner was copied out of it. A name of at most
//! `SHORT_NAME_BYTES` bytes is also kept inline, beside the device list, so
//! those reads stay in the slot's cache lines (DESIGN.md 6).

/// Longest name kept inline. With its length byte it is 24 bytes, which
/// makes the person slot 64 (a cache line's worth).
pub(crate) const SHORT_NAME_BYTES: usize = 23;

/// `len` of a name too long to be kept inline.
const LONG: u8 = u8::MAX;

/// A person's name if it is at most `SHORT_NAME_BYTES` long, or a mark
/// that it is longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShortName {
    /// The name's length, or `LONG`.
    len: u8,
    bytes: [u8; SHORT_NAME_BYTES],
}

impl ShortName {
    /// No name (an anonymous device's owner): reads as the empty name,
    /// which no person has.
    pub(crate) const NONE: ShortName = ShortName {
        len: 0,
        bytes: [0; SHORT_NAME_BYTES],
    };

    pub(crate) fn of(name: &str) -> ShortName {
        let mut bytes = [0; SHORT_NAME_BYTES];
        match bytes.get_mut(..name.len()) {
            Some(to) => {
                to.copy_from_slice(name.as_bytes());
                ShortName {
                    len: name.len() as u8,
                    bytes,
                }
            }
            None => ShortName { len: LONG, bytes },
        }
    }

    /// Whether the name is `name`: `None` when the name is long and only
    /// the full name can tell.
    pub(crate) fn matches(&self, name: &str) -> Option<bool> {
        match self.as_bytes() {
            Some(b) => Some(b == name.as_bytes()),
            None if name.len() <= SHORT_NAME_BYTES => Some(false),
            None => None,
        }
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        match self.len {
            LONG => None,
            n => self.bytes.get(..usize::from(n)),
        }
    }

    /// The name when it is short.
    pub(crate) fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_are_marked() {
        let longest = "x".repeat(SHORT_NAME_BYTES);
        let long = "x".repeat(SHORT_NAME_BYTES + 1);
        for name in ["", "p1", "ünïcødé@example.com", &longest] {
            let s = ShortName::of(name);
            assert_eq!(s.as_str(), Some(name));
            assert_eq!(s.matches(name), Some(true));
            assert_eq!(s.matches("p2"), Some(false));
            assert_eq!(s.matches(&long), Some(false));
        }
        let s = ShortName::of(&long);
        assert_eq!(s.as_str(), None);
        assert_eq!(s.matches(&long), None, "a long name is compared in full");
        assert_eq!(s.matches(&longest), Some(false));
        assert_eq!(std::mem::size_of::<ShortName>(), 24);
    }
}
