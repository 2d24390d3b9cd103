//! A collection most sessions leave empty: a null pointer until first used, given back
//! whenever it empties again. An idle session pays 8 bytes for each of its queue, its
//! in-flight list and its inbound QoS 2 ids instead of a collection's header, and a
//! burst's buffer does not linger.

use std::collections::VecDeque;

use super::Inflight;
use crate::message::Delivery;

/// A collection most sessions leave empty: a null pointer until first used, given
/// back whenever it empties again ([`Sparse::tidy`]). An idle session pays 8 bytes for
/// it instead of a collection's header, and a burst's buffer does not linger.
pub struct Sparse<T>(Option<Box<T>>);

/// What [`Sparse`] holds.
pub trait Collection: Default + 'static {
    /// An empty one to show while nothing is allocated.
    fn none() -> &'static Self;
    fn is_empty(&self) -> bool;
}

/// [`Collection`] for types with a `const fn new()` and an `is_empty`.
macro_rules! collection {
    ($($collection:ty),*) => {$(
        impl Collection for $collection {
            fn none() -> &'static Self {
                static NONE: $collection = <$collection>::new();
                &NONE
            }

            fn is_empty(&self) -> bool {
                <$collection>::is_empty(self)
            }
        }
    )*};
}

collection!(VecDeque<Inflight>, VecDeque<Delivery>, Vec<u16>);

impl<T: Collection> Sparse<T> {
    /// Whether a collection is allocated (one is while it holds something).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the allocation back if the collection is empty.
    pub fn tidy(&mut self) {
        if self.0.as_deref().is_some_and(T::is_empty) {
            self.0 = None;
        }
    }

    /// The collection to take things out of, if there is one (`DerefMut` would make
    /// an empty one first).
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Takes the whole collection, leaving nothing allocated.
    pub fn take(&mut self) -> T {
        self.0.take().map(|boxed| *boxed).unwrap_or_default()
    }
}

impl<T> Default for Sparse<T> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<T: Collection> From<T> for Sparse<T> {
    fn from(collection: T) -> Self {
        let mut sparse = Sparse(Some(Box::new(collection)));
        sparse.tidy();
        sparse
    }
}

impl<T: Collection> std::ops::Deref for Sparse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(collection) => collection,
            None => T::none(),
        }
    }
}

/// Allocates on first use, so meant for adding: take things out through
/// [`Sparse::get_mut`], then call [`Sparse::tidy`].
impl<T: Collection> std::ops::DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}
