//! A device's packed token as its slot holds it: inline when it is short
//! (every APNs token: 64 hex digits pack to 33 bytes), boxed when long.
//!
//! Inline, the token is in the slot's own cache lines: a lookup by token
//! compares it without a second random read, and a device costs no heap
//! allocation for it (DESIGN.md section 6).

use std::ops::Deref;

/// The longest packed token held inline. 38 bytes with the length byte and
/// the enum's tag make the type 40 bytes, the size of its boxed variant's
/// alignment class; an APNs token (33 bytes packed) fits with room for a
/// longer hex token.
pub(crate) const INLINE_TOKEN_BYTES: usize = 38;

/// A packed token (`codec::pack_token`), inline or on the heap.
#[derive(Clone)]
pub(crate) enum SlotToken {
    /// `len` bytes of `bytes` are the token; `len <= INLINE_TOKEN_BYTES`.
    Inline {
        len: u8,
        bytes: [u8; INLINE_TOKEN_BYTES],
    },
    /// A token longer than `INLINE_TOKEN_BYTES` (FCM tokens).
    Heap(Box<[u8]>),
}

// The slot's size depends on it (DESIGN.md section 6).
const _: () = assert!(std::mem::size_of::<SlotToken>() == 40);

impl SlotToken {
    /// Holds `packed`: inline when it fits, else in a box.
    pub(crate) fn new(packed: &[u8]) -> SlotToken {
        let mut bytes = [0u8; INLINE_TOKEN_BYTES];
        match (bytes.get_mut(..packed.len()), u8::try_from(packed.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(packed);
                SlotToken::Inline { len, bytes }
            }
            _ => SlotToken::Heap(Box::from(packed)),
        }
    }

    /// Whether `packed` is held inline (no allocation).
    pub(crate) fn fits_inline(packed: &[u8]) -> bool {
        packed.len() <= INLINE_TOKEN_BYTES
    }

    /// The packed bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            // `len` is at most the array's length by construction.
            SlotToken::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            SlotToken::Heap(b) => b,
        }
    }

    /// A boxed copy, for lists of tokens that outlive the slot.
    pub(crate) fn to_boxed(&self) -> Box<[u8]> {
        Box::from(self.as_bytes())
    }

    /// Whether the token is held inline.
    #[cfg(test)]
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self, SlotToken::Inline { .. })
    }
}

impl Deref for SlotToken {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::pack_token;

    #[test]
    fn an_apns_token_is_inline_and_reads_back_whole() {
        let packed = pack_token(&"ab".repeat(32));
        assert_eq!(packed.len(), 33);
        let t = SlotToken::new(&packed);
        assert!(t.is_inline());
        assert_eq!(&*t, &*packed);
        assert_eq!(&*t.to_boxed(), &*packed);
    }

    #[test]
    fn the_longest_inline_token_is_inline_and_one_more_byte_is_boxed() {
        let fits = vec![7u8; INLINE_TOKEN_BYTES];
        let t = SlotToken::new(&fits);
        assert!(t.is_inline());
        assert_eq!(&*t, &fits[..]);
        let long = vec![9u8; INLINE_TOKEN_BYTES + 1];
        let t = SlotToken::new(&long);
        assert!(!t.is_inline());
        assert_eq!(&*t, &long[..]);
    }

    #[test]
    fn an_fcm_token_is_boxed_and_reads_back_whole() {
        let fcm = format!("cXk1:APA91b{}", "Q".repeat(140));
        let packed = pack_token(&fcm);
        let t = SlotToken::new(&packed);
        assert!(!t.is_inline());
        assert_eq!(&*t, &*packed);
        assert_eq!(
            crate::codec::unpack_token(&t).as_deref(),
            Some(fcm.as_str())
        );
    }

    #[test]
    fn empty_bytes_stay_empty() {
        let t = SlotToken::new(&[]);
        assert!(t.is_inline());
        assert!(t.is_empty());
    }
}
