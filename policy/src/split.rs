//! Weighted traffic splits between the subsets of a service, as used for
//! canaries: product-catalog `v1` at weight 95 and `v2` at weight 5, sticky
//! on a user id so one user keeps seeing one version, with a tester header
//! such as `x-canary: v2` forcing a subset.
//!
//! A [`Split`] is compiled once at config time and is then immutable; a
//! pick borrows it, allocates nothing and follows three rules in order:
//!
//! 1. An override value naming a target exactly selects it, even at weight
//!    0, so a canary can be tested before it takes any real traffic.
//! 2. A sticky key selects a target by weighted rendezvous hashing: each
//!    positive-weight target scores the key, the best score wins, and a
//!    target wins a share of keys equal to its share of the weight.
//! 3. Otherwise a uniform draw over the cumulative weights.
//!
//! Why rendezvous hashing for sticky keys rather than mapping the hash to a
//! point on the cumulative weights: with cumulative ranges, growing one
//! target shifts the ranges of every target after it, so users hop between
//! targets whose weight did not change, and whether a canary keeps its
//! users depends on where it sits in the list. With rendezvous hashing a
//! target's score depends only on the key, its own name and its own weight.
//! Raising a weight can therefore only pull keys onto that target, lowering
//! it only releases its own keys, and adding or removing a target only
//! moves keys to or from it. Growing a canary from 5 to 10 keeps every user
//! who was on it, and reordering targets in the config moves nobody. The
//! cost, one hash mix and one logarithm per positive-weight target, is
//! small for the handful of subsets a split has.
//!
//! Hashing uses [`stable_hash`] and the target names, never the process's
//! random hasher, so every gateway replica and sidecar agrees on a user.

use std::collections::HashSet;

use thiserror::Error;

use crate::lb::rendezvous_score;
use crate::random::{Random, stable_hash};

/// The largest accepted sum of weights. Weights are ratios; a total past
/// `u32::MAX` comes from a mistake in the config (a stray unit or extra
/// zeros), not from a ratio anyone means, so it is rejected rather than
/// silently honoured.
pub const MAX_TOTAL_WEIGHT: u64 = u32::MAX as u64;

/// One destination of a split.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SplitTarget {
    /// Subset name; also the value an override header must carry, and an
    /// input of the sticky hash, so renaming a subset reshuffles its users.
    pub name: String,
    /// Relative share of traffic; 0 takes traffic only by override.
    pub weight: u32,
}

/// Why a split was rejected at config time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// No targets at all.
    #[error("empty split: at least one target is required")]
    Empty,
    /// Nothing could ever be picked without an override.
    #[error("all weights are zero: at least one target needs a positive weight")]
    AllWeightsZero,
    /// Two targets share a name, so an override could not tell them apart.
    #[error("duplicate target name {name:?}")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// The weights add up to more than [`MAX_TOTAL_WEIGHT`].
    #[error("total weight overflow: weights add up to {total}, above the maximum {max}")]
    TotalWeightOverflow {
        /// The sum of all weights.
        total: u64,
        /// The largest accepted sum.
        max: u64,
    },
}

/// A validated, precompiled weighted split. Immutable; share it in the
/// config snapshot.
#[derive(Debug, Clone)]
pub struct Split {
    targets: Box<[SplitTarget]>,
    /// Running sum of weights through each target, for draws. Zero-weight
    /// targets repeat the previous sum, so no draw can land on them.
    cumulative: Box<[u64]>,
    /// `stable_hash` of each name, for sticky scores.
    name_hashes: Box<[u64]>,
    total: u64,
}

impl Split {
    /// Validates and compiles `targets`; their order is kept for
    /// [`Split::targets`] and the indices [`Split::pick`] returns.
    ///
    /// # Errors
    ///
    /// A [`SplitError`] when the list is empty, has no positive weight,
    /// repeats a name, or its weights sum past [`MAX_TOTAL_WEIGHT`].
    pub fn new(targets: Vec<SplitTarget>) -> Result<Split, SplitError> {
        if targets.is_empty() {
            return Err(SplitError::Empty);
        }
        let mut names = HashSet::with_capacity(targets.len());
        for t in &targets {
            if !names.insert(t.name.as_str()) {
                return Err(SplitError::DuplicateName {
                    name: t.name.clone(),
                });
            }
        }
        let mut cumulative = Vec::with_capacity(targets.len());
        let mut total: u64 = 0;
        for t in &targets {
            // u32 weights summed in u64 cannot overflow for any list that
            // fits in memory; saturating keeps that true without a proof.
            total = total.saturating_add(u64::from(t.weight));
            cumulative.push(total);
        }
        if total == 0 {
            return Err(SplitError::AllWeightsZero);
        }
        if total > MAX_TOTAL_WEIGHT {
            return Err(SplitError::TotalWeightOverflow {
                total,
                max: MAX_TOTAL_WEIGHT,
            });
        }
        let name_hashes = targets
            .iter()
            .map(|t| stable_hash(t.name.as_bytes()))
            .collect();
        Ok(Split {
            targets: targets.into_boxed_slice(),
            cumulative: cumulative.into_boxed_slice(),
            name_hashes,
            total,
        })
    }

    /// The targets in config order.
    pub fn targets(&self) -> &[SplitTarget] {
        &self.targets
    }

    /// Sum of all weights; at least 1.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// Index of the target called exactly `name` (case-sensitive).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.name == name)
    }

    /// Override first (a value naming a target, case-sensitive, exact),
    /// then sticky (hash of the key bytes, stable across processes:
    /// [`stable_hash`]), else a random draw.
    ///
    /// Returns an index into [`Split::targets`]. An override value naming no
    /// target is ignored rather than rejected: the header comes from
    /// clients, and a typo should get ordinary traffic, not an error. The
    /// caller passes `None` as the sticky key when the request carries none;
    /// an empty key is hashed like any other.
    pub fn pick(
        &self,
        sticky_key: Option<&[u8]>,
        override_value: Option<&str>,
        rng: &mut impl Random,
    ) -> usize {
        if let Some(index) = override_value.and_then(|v| self.index_of(v)) {
            return index;
        }
        match sticky_key {
            Some(key) => self.sticky(stable_hash(key)),
            None => self.draw(rng.below(self.total)),
        }
    }

    /// [`Split::pick`], returning the target itself.
    pub fn pick_target(
        &self,
        sticky_key: Option<&[u8]>,
        override_value: Option<&str>,
        rng: &mut impl Random,
    ) -> &SplitTarget {
        // In range: `new` rejects empty splits and every path of `pick`
        // returns an index below the number of targets.
        &self.targets[self.pick(sticky_key, override_value, rng)]
    }

    /// The target whose cumulative range holds `point` (below the total).
    fn draw(&self, point: u64) -> usize {
        // The first running sum above the point; zero-weight targets share
        // their predecessor's sum and are skipped by this search.
        let index = self.cumulative.partition_point(|&sum| sum <= point);
        index.min(self.targets.len().saturating_sub(1))
    }

    /// The positive-weight target with the best rendezvous score.
    fn sticky(&self, key_hash: u64) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (i, (target, &name_hash)) in self.targets.iter().zip(&*self.name_hashes).enumerate() {
            if target.weight == 0 {
                continue;
            }
            let score = rendezvous_score(key_hash, name_hash, f64::from(target.weight));
            if score > best_score {
                best = i;
                best_score = score;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::random::SplitMix64;
    use proptest::prelude::*;

    fn split(weights: &[(&str, u32)]) -> Split {
        Split::new(
            weights
                .iter()
                .map(|&(name, weight)| SplitTarget {
                    name: name.to_owned(),
                    weight,
                })
                .collect(),
        )
        .unwrap()
    }

    fn user(i: u64) -> Vec<u8> {
        format!("user-{i}").into_bytes()
    }

    fn sticky_picks(s: &Split, users: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(0);
        (0..users)
            .map(|i| s.pick(Some(&user(i)), None, &mut rng))
            .collect()
    }

    fn assert_shares(s: &Split, picks: &[usize]) {
        for (i, t) in s.targets().iter().enumerate() {
            let seen = picks.iter().filter(|&&p| p == i).count();
            let share = seen as f64 / picks.len() as f64;
            let want = f64::from(t.weight) / s.total_weight() as f64;
            assert!(
                (share - want).abs() <= 0.01,
                "{}: share {share}, want {want}",
                t.name
            );
            if t.weight == 0 {
                assert_eq!(seen, 0, "{} has weight 0", t.name);
            }
        }
    }

    #[test]
    fn new_rejects_bad_splits() {
        assert_eq!(Split::new(vec![]).unwrap_err(), SplitError::Empty);
        let zero = vec![SplitTarget {
            name: "v1".into(),
            weight: 0,
        }];
        assert_eq!(Split::new(zero).unwrap_err(), SplitError::AllWeightsZero);
        let dup = vec![
            SplitTarget {
                name: "v1".into(),
                weight: 1,
            },
            SplitTarget {
                name: "v1".into(),
                weight: 2,
            },
        ];
        let err = Split::new(dup).unwrap_err();
        assert_eq!(err.to_string(), "duplicate target name \"v1\"");
        let huge = vec![
            SplitTarget {
                name: "a".into(),
                weight: u32::MAX,
            },
            SplitTarget {
                name: "b".into(),
                weight: 1,
            },
        ];
        assert!(matches!(
            Split::new(huge).unwrap_err(),
            SplitError::TotalWeightOverflow { total, .. } if total == MAX_TOTAL_WEIGHT + 1
        ));
    }

    #[test]
    fn new_keeps_order_and_total() {
        let s = split(&[("v1", 95), ("v2", 5)]);
        assert_eq!(s.total_weight(), 100);
        assert_eq!(s.targets()[1].name, "v2");
        assert_eq!(s.index_of("v2"), Some(1));
        assert_eq!(s.index_of("V2"), None);
    }

    #[test]
    fn single_target_always_wins() {
        let s = split(&[("only", 1)]);
        let mut rng = SplitMix64::new(4);
        for i in 0..100 {
            assert_eq!(s.pick(None, None, &mut rng), 0);
            assert_eq!(s.pick(Some(&user(i)), Some("other"), &mut rng), 0);
        }
    }

    #[test]
    fn draws_skip_zero_weight_targets() {
        let s = split(&[("a", 0), ("b", 3), ("c", 0), ("d", 1), ("e", 0)]);
        assert_eq!(s.draw(0), 1);
        assert_eq!(s.draw(2), 1);
        assert_eq!(s.draw(3), 3);
    }

    #[test]
    fn override_forces_a_target_even_at_weight_zero() {
        let s = split(&[("v1", 100), ("v2", 0)]);
        let mut rng = SplitMix64::new(1);
        for i in 0..100 {
            assert_eq!(s.pick(Some(&user(i)), Some("v2"), &mut rng), 1);
            assert_eq!(s.pick(None, Some("v2"), &mut rng), 1);
        }
        assert_eq!(s.pick_target(None, Some("v2"), &mut rng).name, "v2");
    }

    #[test]
    fn unknown_override_falls_back_to_normal_picking() {
        let s = split(&[("v1", 50), ("v2", 50)]);
        let mut rng = SplitMix64::new(2);
        // Exact and case-sensitive: none of these name a target.
        for bad in ["V2", "v2 ", "", "v3"] {
            for i in 0..200 {
                let key = user(i);
                assert_eq!(
                    s.pick(Some(&key), Some(bad), &mut rng),
                    s.pick(Some(&key), None, &mut rng)
                );
            }
        }
        // Without a sticky key the fallback is the draw, which uses both.
        let mut a = SplitMix64::new(9);
        let mut b = SplitMix64::new(9);
        let with_bad: Vec<usize> = (0..200).map(|_| s.pick(None, Some("x"), &mut a)).collect();
        let plain: Vec<usize> = (0..200).map(|_| s.pick(None, None, &mut b)).collect();
        assert_eq!(with_bad, plain);
        assert!(plain.contains(&0) && plain.contains(&1));
    }

    #[test]
    fn sticky_same_key_same_target() {
        let s = split(&[("v1", 95), ("v2", 5)]);
        let mut rng = SplitMix64::new(3);
        for i in 0..1_000 {
            let key = user(i);
            let first = s.pick(Some(&key), None, &mut rng);
            for _ in 0..5 {
                assert_eq!(s.pick(Some(&key), None, &mut rng), first);
            }
        }
    }

    #[test]
    fn sticky_shares_match_weights() {
        let s = split(&[("v1", 95), ("v2", 5)]);
        assert_shares(&s, &sticky_picks(&s, 100_000));
        let s = split(&[("a", 10), ("b", 0), ("c", 30), ("d", 60)]);
        assert_shares(&s, &sticky_picks(&s, 100_000));
    }

    #[test]
    fn sticky_ignores_target_order() {
        let ab = split(&[("v1", 95), ("v2", 5)]);
        let ba = split(&[("v2", 5), ("v1", 95)]);
        let mut rng = SplitMix64::new(0);
        for i in 0..2_000 {
            let key = user(i);
            assert_eq!(
                ab.pick_target(Some(&key), None, &mut rng).name,
                ba.pick_target(Some(&key), None, &mut rng).name
            );
        }
    }

    #[test]
    fn canary_growth_keeps_its_users() {
        let before = sticky_picks(&split(&[("v1", 95), ("v2", 5)]), 100_000);
        for grown in [
            split(&[("v1", 95), ("v2", 10)]),
            split(&[("v1", 90), ("v2", 10)]),
        ] {
            let after = sticky_picks(&grown, 100_000);
            let mut joined = 0;
            for (old, new) in before.iter().zip(&after) {
                assert!(*old != 1 || *new == 1, "a canary user left the canary");
                if *old == 0 && *new == 1 {
                    joined += 1;
                }
            }
            assert!(joined > 3_000, "the canary gained only {joined} users");
        }
    }

    #[test]
    fn sticky_mapping_is_pinned() {
        // Replicas and releases must agree on every user; a change here
        // reshuffles production users and needs a deliberate decision.
        let s = split(&[("v1", 95), ("v2", 5)]);
        let on_canary: Vec<u64> = (0..200).filter(|&i| sticky_picks_one(&s, i) == 1).collect();
        assert_eq!(on_canary, PINNED_CANARY_USERS);
    }

    fn sticky_picks_one(s: &Split, i: u64) -> usize {
        s.pick(Some(&user(i)), None, &mut SplitMix64::new(0))
    }

    /// Users `user-0` to `user-199` on `v2` of a 95/5 split; 15 of 200 is
    /// within the noise of 5% for so few keys.
    const PINNED_CANARY_USERS: &[u64] = &[
        4, 12, 25, 39, 61, 70, 74, 78, 143, 148, 161, 176, 177, 180, 198,
    ];

    fn targets() -> impl Strategy<Value = Vec<SplitTarget>> {
        prop::collection::vec(0u32..=100, 1..6)
            .prop_filter("some weight must be positive", |w| w.iter().any(|&w| w > 0))
            .prop_map(|weights| {
                weights
                    .into_iter()
                    .enumerate()
                    .map(|(i, weight)| SplitTarget {
                        name: format!("subset-{i}"),
                        weight,
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn draws_match_weights(targets in targets(), seed in any::<u64>()) {
            let s = Split::new(targets).unwrap();
            let mut rng = SplitMix64::new(seed);
            let picks: Vec<usize> = (0..100_000).map(|_| s.pick(None, None, &mut rng)).collect();
            assert_shares(&s, &picks);
        }

        #[test]
        fn growing_a_weight_only_pulls_keys_onto_it(
            targets in targets(),
            which in any::<prop::sample::Index>(),
            extra in 1u32..50,
        ) {
            let before = Split::new(targets.clone()).unwrap();
            let grown_index = which.index(targets.len());
            let mut grown = targets;
            grown[grown_index].weight += extra;
            let after = Split::new(grown).unwrap();
            let mut rng = SplitMix64::new(0);
            for i in 0..2_000 {
                let key = user(i);
                let old = before.pick(Some(&key), None, &mut rng);
                let new = after.pick(Some(&key), None, &mut rng);
                prop_assert!(old == new || new == grown_index);
            }
        }
    }
}
