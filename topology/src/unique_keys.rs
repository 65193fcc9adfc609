//! Maps whose keys must be unique. YAML and JSON parsers keep the last of two equal keys, so
//! `payments:` written twice in a routes file would silently replace the first (and move
//! its traffic). Use `#[serde(deserialize_with = "crate::unique_keys::map")]`: a repeated
//! key is an error naming the key; serde_yaml adds the line of the repeat, serde_json too.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, Visitor};
use serde::Deserialize;

/// A map with string keys, refused when a key appears twice.
pub fn map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    d.deserialize_map(MapVisitor(PhantomData))
}

struct MapVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = access.next_key_seed(NewKey(&out))? {
            let value = access.next_value()?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

/// A key not yet in the map. The check runs inside the key's own `visit_str`, so the
/// parser's error carries the position of the repeated key, not of the map.
struct NewKey<'a, V>(&'a BTreeMap<String, V>);

impl<'de, V> DeserializeSeed<'de> for NewKey<'_, V> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_string(self)
    }
}

impl<'de, V> Visitor<'de> for NewKey<'_, V> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<String, E> {
        if self.0.contains_key(key) {
            return Err(E::custom(format!("duplicate key {key:?}")));
        }
        Ok(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct M {
        #[serde(deserialize_with = "map")]
        m: BTreeMap<String, u32>,
    }

    #[test]
    fn a_repeated_key_is_named_with_its_line() {
        let m: M = serde_yaml::from_str("m:\n  a: 1\n  b: 2\n").expect("unique");
        assert_eq!(m.m.len(), 2);
        let err = serde_yaml::from_str::<M>("m:\n  a: 1\n  b: 2\n  a: 3\n").expect_err("dup");
        assert_eq!(err.to_string(), "m: duplicate key \"a\" at line 4 column 3");
        let err = serde_json::from_str::<M>(r#"{"m": {"a": 1, "a": 2}}"#).expect_err("dup");
        assert!(err.to_string().starts_with("duplicate key \"a\""), "{err}");
    }
}
