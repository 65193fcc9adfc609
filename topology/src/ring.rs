//! The bucket ring: how a sticky key becomes a datacenter. Pure functions, no I/O.
//!
//! A key hashes (FNV-1a 64 with a splitmix finalizer, stable across processes and releases)
//! into one of 10,000 buckets. A route's basis-point weights cut the buckets into contiguous
//! ranges in datacenter-code order. So a key never changes datacenter while the weights stand
//! still, and moving X basis points between two neighbouring datacenters moves exactly X
//! buckets. When a datacenter is down, each of its buckets is re-hashed onto the healthy
//! datacenters in proportion to their weights: the spill is sticky too, and the buckets of
//! healthy datacenters do not move at all.

use std::collections::BTreeMap;

use crate::model::{Datacenter, RouteHash, Weights, TOTAL_BASIS_POINTS};

/// Number of buckets; equal to the basis points in 100%, so one basis point is one bucket.
pub const BUCKETS: u32 = TOTAL_BASIS_POINTS;

/// Stable 64-bit hash of a sticky key.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a hash uniformly onto `0..n` without modulo bias worth measuring.
fn scale(h: u64, n: u32) -> u32 {
    ((u128::from(h) * u128::from(n)) >> 64) as u32
}

/// The bucket of a sticky key.
pub fn bucket_of(key: &[u8]) -> u32 {
    scale(hash_key(key), BUCKETS)
}

/// The bucket of a sticky key under a route's hash: the one definition every component
/// (sidecar, control plane, tests) uses.
///
/// `xxh64` is defined as what HAProxy computes with [`HAPROXY_XXH64_BUCKET`]: HAProxy's
/// `xxh64` converter returns XXH64 (seed 0) as a *signed* 64-bit integer and its `mod` keeps
/// the sign of the dividend (C's `%`), so `mod(10000)` alone would give -9999..9999;
/// `add(10000),mod(10000)` folds that into 0..10000. Here: the Euclidean remainder of the hash
/// read as an `i64`.
pub fn bucket_of_with(hash: RouteHash, key: &[u8]) -> u32 {
    match hash {
        RouteHash::Fnv1aMix => bucket_of(key),
        RouteHash::Xxh64 => {
            let h = xxhash_rust::xxh64::xxh64(key, 0) as i64;
            // rem_euclid by a positive divisor is in 0..BUCKETS, so the cast is exact.
            h.rem_euclid(i64::from(BUCKETS)) as u32
        }
    }
}

/// The HAProxy converters that turn a sample into its `xxh64` bucket (see
/// [`bucket_of_with`]).
pub const HAPROXY_XXH64_BUCKET: &str = "xxh64,mod(10000),add(10000),mod(10000)";

/// The HAProxy sample expression of the `xxh64` bucket of request header `header`, e.g.
/// `req.hdr(x-twin-unit),xxh64,mod(10000),add(10000),mod(10000)`.
pub fn haproxy_bucket_expr(header: &str) -> String {
    format!("req.hdr({header}),{HAPROXY_XXH64_BUCKET}")
}

/// HAProxy's largest server weight.
pub const HAPROXY_MAX_WEIGHT: u32 = 256;

/// A route's share in basis points as an HAProxy server weight (0..=256, split in
/// proportion): `round(bp * 256 / 10000)`, a non-zero share at least 1, 0 stays 0. The edge
/// sync sets it, and the drill's HAProxy starts with it.
pub fn haproxy_weight(bp: u32) -> u32 {
    if bp == 0 {
        return 0;
    }
    let w = (u64::from(bp) * u64::from(HAPROXY_MAX_WEIGHT) + u64::from(TOTAL_BASIS_POINTS) / 2)
        / u64::from(TOTAL_BASIS_POINTS);
    (w as u32).clamp(1, HAPROXY_MAX_WEIGHT)
}

/// Keys and their `xxh64` buckets, as a real HAProxy 2.6 computes them with
/// [`HAPROXY_XXH64_BUCKET`]. Shared by this crate's unit test, the sidecar's tests and the
/// control plane's test against a real HAProxy: if one of them disagrees, the edge and the
/// sidecars disagree about where a unit lives.
pub const XXH64_TEST_VECTOR: &[(&str, u32)] = &[
    // xxh64 = 4142921581652311169 (positive)
    ("user-42", 1169),
    // xxh64 = 497719764217913663
    ("u1", 3663),
    // xxh64 = -976186143632506765 (negative: mod gives -6765, folded to 3235)
    ("u2", 3235),
    ("abc", 2249),
];

/// Where a bucket went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index into [`BucketRing::datacenters`].
    pub dc: usize,
    /// True when the bucket's own datacenter was down and it spilled here.
    pub spilled: bool,
}

/// A route's weights laid onto the 10,000 buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRing {
    /// Datacenter names in code order (only those with a known code).
    dcs: Vec<String>,
    /// Weight of each datacenter, in basis points.
    weights: Vec<u32>,
    /// Exclusive end bucket of each datacenter's range.
    ends: Vec<u32>,
}

impl BucketRing {
    /// Lays `weights` onto the ring. Datacenters are ordered by their code; a weight for a
    /// datacenter not in `dcs` is ignored (validation rejects such routes before they get
    /// here). Weights that do not sum to 10000 are scaled so the ranges still cover the ring.
    pub fn new(weights: &Weights, dcs: &BTreeMap<String, Datacenter>) -> BucketRing {
        let mut ordered: Vec<(&String, &Datacenter)> = dcs.iter().collect();
        ordered.sort_by_key(|(_, d)| d.code);
        let names: Vec<String> = ordered.iter().map(|(n, _)| (*n).clone()).collect();
        let ws: Vec<u32> = names.iter().map(|n| weights.get(n)).collect();
        let total: u64 = ws.iter().map(|&w| u64::from(w)).sum();
        let mut ends = Vec::with_capacity(ws.len());
        let mut acc: u64 = 0;
        for &w in &ws {
            acc += u64::from(w);
            let end = (acc * u64::from(BUCKETS))
                .checked_div(total)
                .map_or(0, |e| e as u32);
            ends.push(end);
        }
        BucketRing {
            dcs: names,
            weights: ws,
            ends,
        }
    }

    /// Datacenter names in ring order.
    pub fn datacenters(&self) -> &[String] {
        &self.dcs
    }

    /// The datacenter that owns `bucket` while every datacenter is healthy.
    pub fn owner(&self, bucket: u32) -> Option<usize> {
        let i = self.ends.partition_point(|&end| end <= bucket);
        (i < self.dcs.len()).then_some(i)
    }

    /// The datacenter for `bucket` given which datacenters are up (`up[i]` for
    /// `datacenters()[i]`). `None` when no datacenter is up, or when the owner is down and
    /// `spill` is false.
    pub fn pick(&self, bucket: u32, up: &[bool], spill: bool) -> Option<Pick> {
        let owner = self.owner(bucket);
        if let Some(o) = owner {
            if up.get(o).copied().unwrap_or(false) {
                return Some(Pick {
                    dc: o,
                    spilled: false,
                });
            }
            if !spill {
                return None;
            }
        }
        // Spill: re-hash the bucket onto the healthy datacenters by weight; if all of them
        // have weight 0, spread evenly across them.
        let healthy: Vec<usize> = (0..self.dcs.len())
            .filter(|&i| up.get(i).copied().unwrap_or(false))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let total: u64 = healthy.iter().map(|&i| u64::from(self.weights[i])).sum();
        let h = mix(u64::from(bucket) ^ 0x7477_696e_5f73_7069); // "twin_spi"
        if total == 0 {
            let k = scale(h, healthy.len() as u32) as usize;
            return Some(Pick {
                dc: healthy[k],
                spilled: true,
            });
        }
        let mut point = u64::from(scale(h, u32::try_from(total).unwrap_or(u32::MAX)));
        for &i in &healthy {
            let w = u64::from(self.weights[i]);
            if point < w {
                return Some(Pick {
                    dc: i,
                    spilled: true,
                });
            }
            point -= w;
        }
        healthy.last().map(|&dc| Pick { dc, spilled: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dcs(n: usize) -> BTreeMap<String, Datacenter> {
        (0..n)
            .map(|i| {
                (
                    format!("dc{i}"),
                    Datacenter {
                        code: i as u8,
                        display_name: String::new(),
                    },
                )
            })
            .collect()
    }

    fn weights(ws: &[u32]) -> Weights {
        Weights(
            ws.iter()
                .enumerate()
                .map(|(i, w)| (format!("dc{i}"), *w))
                .collect(),
        )
    }

    fn count(ring: &BucketRing, n: usize) -> Vec<u32> {
        let mut c = vec![0; n];
        for b in 0..BUCKETS {
            c[ring.owner(b).expect("owned")] += 1;
        }
        c
    }

    #[test]
    fn weights_cut_exact_ranges() {
        let ring = BucketRing::new(&weights(&[3000, 7000]), &dcs(2));
        assert_eq!(count(&ring, 2), vec![3000, 7000]);
        let ring = BucketRing::new(&weights(&[0, 10000]), &dcs(2));
        assert_eq!(count(&ring, 2), vec![0, 10000]);
    }

    #[test]
    fn moving_ten_percent_moves_exactly_ten_percent_of_buckets() {
        let a = BucketRing::new(&weights(&[5000, 5000]), &dcs(2));
        let b = BucketRing::new(&weights(&[4000, 6000]), &dcs(2));
        let moved = (0..BUCKETS).filter(|&k| a.owner(k) != b.owner(k)).count();
        assert_eq!(moved, 1000);
    }

    #[test]
    fn spill_keeps_healthy_buckets_in_place_and_follows_weights() {
        let ring = BucketRing::new(&weights(&[2000, 3000, 5000]), &dcs(3));
        let up = [true, false, true];
        let mut to = [0u32; 3];
        for b in 0..BUCKETS {
            let p = ring.pick(b, &up, true).expect("someone is up");
            let owner = ring.owner(b).expect("owned");
            if owner != 1 {
                assert_eq!(
                    p,
                    Pick {
                        dc: owner,
                        spilled: false
                    }
                );
            } else {
                assert!(p.spilled);
                to[p.dc] += 1;
            }
        }
        // 3000 spilled buckets split 2:5 between dc0 and dc2, within hashing noise.
        assert_eq!(to[1], 0);
        assert!((700..1000).contains(&to[0]), "{to:?}");
        assert_eq!(ring.pick(3000, &up, false), None);
        assert_eq!(ring.pick(0, &[false, false, false], true), None);
    }

    #[test]
    fn hash_is_stable_across_releases() {
        // Changing these values would move every sticky user: never do it.
        assert_eq!(bucket_of(b""), scale(mix(0xcbf2_9ce4_8422_2325), BUCKETS));
        assert_eq!(bucket_of(b"user-42"), bucket_of(b"user-42"));
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| bucket_of(format!("u{i}").as_bytes()))
            .collect();
        assert!(spread.len() > 900);
    }

    #[test]
    fn weights_follow_the_control_planes_rounding() {
        assert_eq!(haproxy_weight(5000), 128);
        assert_eq!(haproxy_weight(3000), 77);
        assert_eq!(haproxy_weight(7000), 179);
        assert_eq!(haproxy_weight(10000), 256);
        assert_eq!(haproxy_weight(0), 0);
        assert_eq!(haproxy_weight(1), 1);
    }

    #[test]
    fn xxh64_buckets_match_haproxy() {
        for &(key, bucket) in XXH64_TEST_VECTOR {
            assert_eq!(
                bucket_of_with(RouteHash::Xxh64, key.as_bytes()),
                bucket,
                "{key}"
            );
        }
        // The raw hash, read as HAProxy's signed integer.
        assert_eq!(
            xxhash_rust::xxh64::xxh64(b"u2", 0) as i64,
            -976_186_143_632_506_765
        );
        // The default hash is today's hash: no unit moves on upgrade.
        assert_eq!(
            bucket_of_with(RouteHash::Fnv1aMix, b"user-42"),
            bucket_of(b"user-42")
        );
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| bucket_of_with(RouteHash::Xxh64, format!("u{i}").as_bytes()))
            .collect();
        assert!(spread.len() > 900);
        assert!(spread.iter().all(|&b| b < BUCKETS));
    }

    proptest! {
        #[test]
        fn any_weights_cover_the_ring_in_proportion(ws in proptest::collection::vec(0u32..10_000, 1..8)) {
            let total: u32 = ws.iter().sum();
            prop_assume!(total > 0);
            let n = ws.len();
            let ring = BucketRing::new(&weights(&ws), &dcs(n));
            let c = count(&ring, n);
            for i in 0..n {
                let want = f64::from(ws[i]) * f64::from(BUCKETS) / f64::from(total);
                prop_assert!((f64::from(c[i]) - want).abs() <= 1.0, "{c:?} vs {ws:?}");
            }
        }
    }
}
