//! [`Shared`]: a part of a [`crate::Topology`] that copies of the topology share until one of
//! them changes it (copy on write).
//!
//! A topology view applies each watch response to a copy of the last published topology
//! (readers keep the one they loaded). With plain maps that copy was the whole topology, so
//! one endpoint registration cost every view a copy of every route and endpoint: O(fleet)
//! per event and per view. Held in `Shared` parts (the route map and each route, the
//! endpoint map and each service's endpoints), a copy is a few reference counts, and a
//! change copies only the maps on its path: the route map's entries and one route, or the
//! endpoint map's entries and one service's endpoints.
//!
//! Reading is unchanged (`Deref`, and `&shared` iterates like the value). Writing through
//! `DerefMut` copies the value first if another topology still holds it, so a published
//! topology can never change under its readers. On disk a `Shared<T>` is exactly a `T`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value shared between topology copies, copied when one of them writes to it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    /// True when both hold the very same value (not a copy): a part a change did not touch.
    /// A table built from a topology can keep what it built from an unchanged part.
    pub fn ptr_eq(a: &Shared<T>, b: &Shared<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    /// Copies the value first when another topology holds it too.
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Shared<T> {
        Shared::new(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'a, T> IntoIterator for &'a Shared<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        self.0.as_ref().into_iter()
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shared<T>, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_write_copies_only_a_value_another_copy_still_holds() {
        let mut a: Shared<BTreeMap<String, Shared<Vec<u32>>>> = Shared::default();
        a.insert("x".into(), Shared::new(vec![1]));
        a.insert("y".into(), Shared::new(vec![2]));
        let before = a.clone();
        assert!(Shared::ptr_eq(&a, &before));
        if let Some(x) = a.get_mut("x") {
            x.push(3);
        }
        // The copy kept its values; the untouched entry is still the same value in both.
        assert_eq!(*before["x"], vec![1]);
        assert_eq!(*a["x"], vec![1, 3]);
        assert!(!Shared::ptr_eq(&a["x"], &before["x"]));
        assert!(Shared::ptr_eq(&a["y"], &before["y"]));
        // A value nobody else holds is written in place.
        let y = Shared::clone(&a["y"]);
        drop(before);
        drop(y);
        let x_before: *const Vec<u32> = &*a["x"];
        if let Some(x) = a.get_mut("x") {
            x.push(4);
        }
        assert!(std::ptr::eq(x_before, &*a["x"]));
    }

    #[test]
    fn on_disk_a_shared_value_is_the_value() {
        let a: Shared<BTreeMap<String, Shared<u32>>> =
            Shared::new([("k".to_string(), Shared::new(7))].into());
        let json = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(json, r#"{"k":7}"#);
        let back: Shared<BTreeMap<String, Shared<u32>>> =
            serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, a);
        let keys: Vec<&String> = (&a).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["k"]);
    }
}
