//! Matrix-factorization recommender: biased MF as in surprise's SVD.
//!
//! A user's predicted rating of an item is `μ + b_u + b_i + q_i·p_u`. The model file stores
//! the factors as flat row-major arrays (the shape training produces); compiling validates
//! them and keeps the item factors as one contiguous (factors × items) matrix, so that all
//! the known users of a batch are scored by a single matrix product, after which each
//! user's top `n` is a partial selection rather than a sort of every item.
//!
//! A user the model has never seen gets the most-rated items instead (`cold_start`), scored
//! by their baseline `μ + b_i`.

use std::borrow::Cow;
use std::collections::{BinaryHeap, HashMap, HashSet};

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::ModelError;

/// Largest `n` a request may ask for.
pub const MAX_N: usize = 100;

/// The recommender as written in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommenderSpec {
    /// Length of every user and item factor vector.
    pub factors: usize,
    /// Mean of the training ratings (μ).
    pub global_mean: f32,
    /// External user ids; a user's position here indexes the per-user arrays.
    pub user_ids: Vec<i64>,
    pub user_bias: Vec<f32>,
    /// Row-major, `user_ids.len()` × `factors`.
    pub user_factors: Vec<f32>,
    /// External item ids; an item's position here is its index everywhere else.
    pub item_ids: Vec<i64>,
    pub item_bias: Vec<f32>,
    /// Row-major, `item_ids.len()` × `factors`.
    pub item_factors: Vec<f32>,
    /// Display titles, one per item, or empty when the model has none.
    #[serde(default)]
    pub item_titles: Vec<Option<String>>,
    /// Per user, the indices of the items they have already rated: never recommended back
    /// to them, and counted to rank items by popularity for unknown users.
    pub rated: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub uid: i64,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoredItem<'a> {
    pub item: i64,
    /// The predicted rating (unclipped: it only has to rank items).
    pub score: f32,
    pub title: Option<&'a str>,
}

/// What was learned about one user after the model was trained (see `crate::online`): it
/// replaces the model's view of that user for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserOverride<'a> {
    /// `(b_u, p_u)` solved against this very model, or `None` to keep the model's own
    /// (or the popular list for a user the model does not know).
    pub learned: Option<(f32, &'a [f32])>,
    /// Item ids the user has rated or seen since: never recommended back, whether or not
    /// `learned` is present.
    pub seen: &'a [i64],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation<'a> {
    pub items: Vec<ScoredItem<'a>>,
    /// The user was unknown, so these are the most popular items rather than personal ones.
    pub cold_start: bool,
}

/// The scoring form of a recommender.
#[derive(Debug)]
pub struct Recommender {
    global_mean: f32,
    /// Ascending, so that a user is found by binary search; every per-user array follows
    /// this order rather than the file's.
    user_ids: Box<[i64]>,
    user_bias: Box<[f32]>,
    /// users × factors.
    user_factors: Array2<f32>,
    item_ids: Box<[i64]>,
    /// What folding users in needs (`crate::online`); boxed, as scoring seldom reads it.
    items: Box<ItemLookup>,
    /// `μ + b_i`, so that scoring adds one term per item instead of two.
    item_base: Box<[f32]>,
    /// factors × items, contiguous: the right-hand side of the batch product.
    item_factors_t: Array2<f32>,
    /// Empty, or one per item.
    titles: Box<[Option<String>]>,
    /// User `u`'s rated items are `rated_items[rated_start[u]..rated_start[u + 1]]`.
    rated_start: Box<[usize]>,
    rated_items: Box<[u32]>,
    /// Up to `MAX_N` item indices, most popular first.
    popular: Box<[u32]>,
}

impl Recommender {
    /// Validates a recommender read from a file and compiles it.
    pub fn compile(spec: &RecommenderSpec) -> Result<Self, ModelError> {
        let invalid = ModelError::Invalid;
        let k = spec.factors;
        let n_users = spec.user_ids.len();
        let n_items = spec.item_ids.len();
        if k == 0 {
            return Err(invalid("the recommender has no factors".into()));
        }
        if n_items == 0 {
            return Err(invalid("the recommender has no items".into()));
        }
        // Item indices are stored as u32 and must stay below u32::MAX (see `rank_key`).
        if n_items >= u32::MAX as usize {
            return Err(invalid("the recommender has too many items".into()));
        }
        if !spec.global_mean.is_finite() {
            return Err(invalid(format!(
                "global_mean is {}, not a finite number",
                spec.global_mean
            )));
        }
        check_len("user_bias", spec.user_bias.len(), n_users, "user_ids")?;
        check_len("item_bias", spec.item_bias.len(), n_items, "item_ids")?;
        check_len("rated", spec.rated.len(), n_users, "user_ids")?;
        let user_cells = n_users
            .checked_mul(k)
            .ok_or_else(|| invalid("user_factors would be too large".into()))?;
        let item_cells = n_items
            .checked_mul(k)
            .ok_or_else(|| invalid("item_factors would be too large".into()))?;
        check_len(
            "user_factors",
            spec.user_factors.len(),
            user_cells,
            "users × factors",
        )?;
        check_len(
            "item_factors",
            spec.item_factors.len(),
            item_cells,
            "items × factors",
        )?;
        if !spec.item_titles.is_empty() {
            check_len("item_titles", spec.item_titles.len(), n_items, "item_ids")?;
        }
        check_finite("user_bias", &spec.user_bias)?;
        check_finite("item_bias", &spec.item_bias)?;
        check_finite("user_factors", &spec.user_factors)?;
        check_finite("item_factors", &spec.item_factors)?;

        let mut by_id: Vec<usize> = (0..n_users).collect();
        by_id.sort_unstable_by_key(|&u| spec.user_ids[u]);
        if let Some(pair) = by_id
            .windows(2)
            .find(|pair| spec.user_ids[pair[0]] == spec.user_ids[pair[1]])
        {
            let uid = spec.user_ids[pair[0]];
            return Err(invalid(format!("user id {uid} appears more than once")));
        }
        let mut seen_items = HashSet::with_capacity(n_items);
        for &id in &spec.item_ids {
            if !seen_items.insert(id) {
                return Err(invalid(format!("item id {id} appears more than once")));
            }
        }

        let mut rated_start = Vec::with_capacity(n_users + 1);
        let mut rated_items = Vec::with_capacity(spec.rated.iter().map(Vec::len).sum());
        let mut rating_counts = vec![0u32; n_items];
        rated_start.push(0);
        for &u in &by_id {
            let start = rated_items.len();
            for &i in &spec.rated[u] {
                if i as usize >= n_items {
                    return Err(invalid(format!(
                        "user {} rated item index {i}, but there are only {n_items} items",
                        spec.user_ids[u]
                    )));
                }
                rated_items.push(i);
            }
            // A duplicate would count twice towards popularity.
            let mine = &mut rated_items[start..];
            mine.sort_unstable();
            let unique = dedup_sorted(mine);
            rated_items.truncate(start + unique);
            for &i in &rated_items[start..] {
                rating_counts[i as usize] += 1;
            }
            rated_start.push(rated_items.len());
        }

        let item_base: Vec<f32> = spec
            .item_bias
            .iter()
            .map(|b| spec.global_mean + b)
            .collect();
        for (i, base) in item_base.iter().enumerate() {
            if !base.is_finite() {
                return Err(invalid(format!(
                    "item {}'s baseline overflows",
                    spec.item_ids[i]
                )));
            }
        }

        // Most ratings first; among equals, the better baseline (a regularised mean rating),
        // then the smaller id, so the order never depends on the file's item order.
        let mut by_popularity: Vec<u32> = (0..n_items as u32).collect();
        by_popularity.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            rating_counts[b]
                .cmp(&rating_counts[a])
                .then(item_base[b].total_cmp(&item_base[a]))
                .then(spec.item_ids[a].cmp(&spec.item_ids[b]))
        });
        by_popularity.truncate(MAX_N);

        let user_rows: Vec<f32> = by_id
            .iter()
            .flat_map(|&u| &spec.user_factors[u * k..(u + 1) * k])
            .copied()
            .collect();
        let user_factors = Array2::from_shape_vec((n_users, k), user_rows)
            .map_err(|e| invalid(format!("user_factors: {e}")))?;
        let item_rows = Array2::from_shape_vec((n_items, k), spec.item_factors.clone())
            .map_err(|e| invalid(format!("item_factors: {e}")))?;
        let item_factors_t = item_rows.t().as_standard_layout().into_owned();

        Ok(Self {
            global_mean: spec.global_mean,
            user_ids: by_id.iter().map(|&u| spec.user_ids[u]).collect(),
            user_bias: by_id.iter().map(|&u| spec.user_bias[u]).collect(),
            user_factors,
            item_ids: spec.item_ids.clone().into(),
            items: Box::new(ItemLookup {
                index: spec
                    .item_ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, i as u32))
                    .collect(),
                rows: item_rows,
            }),
            item_base: item_base.into(),
            item_factors_t,
            titles: spec.item_titles.clone().into(),
            rated_start: rated_start.into(),
            rated_items: rated_items.into(),
            popular: by_popularity.into(),
        })
    }

    /// One recommendation per request, in request order. The known users' factor vectors
    /// are gathered into one (batch × factors) matrix and multiplied by the item factors in
    /// a single product: far faster than a dot product per user and item.
    pub fn recommend_batch(&self, requests: &[Request]) -> Vec<Recommendation<'_>> {
        self.recommend_batch_with(requests, &[])
    }

    /// `recommend_batch`, with what was learned online about some of the users:
    /// `overrides` is empty or holds one entry per request.
    pub fn recommend_batch_with(
        &self,
        requests: &[Request],
        overrides: &[Option<UserOverride<'_>>],
    ) -> Vec<Recommendation<'_>> {
        let k = self.factors();
        let override_of = |at: usize| overrides.get(at).copied().flatten();
        // Per request: the model's index of the user (for its rated items), and the bias
        // and factors that score them, if any.
        let users: Vec<(Option<usize>, Scoring<'_>)> = requests
            .iter()
            .enumerate()
            .map(|(at, r)| {
                let known = self.user_ids.binary_search(&r.uid).ok();
                let learned = override_of(at).and_then(|o| o.learned);
                let scoring = learned.filter(|(_, p)| p.len() == k).or_else(|| {
                    known.and_then(|u| {
                        let row = self.user_factors.row(u);
                        Some((self.user_bias[u], row.to_slice()?))
                    })
                });
                (known, scoring)
            })
            .collect();
        let personal: Vec<f32> = users
            .iter()
            .filter_map(|(_, scoring)| scoring.map(|(_, p)| p))
            .flatten()
            .copied()
            .collect();
        let rows_wanted = personal.len() / k;
        let products = match Array2::from_shape_vec((rows_wanted, k), personal) {
            Ok(matrix) if rows_wanted > 0 => matrix.dot(&self.item_factors_t),
            _ => Array2::zeros((0, self.item_ids.len())),
        };
        // The product comes out row-major; should it not, reading it in logical order copies.
        let products: Cow<'_, [f32]> = match products.as_slice() {
            Some(flat) => Cow::Borrowed(flat),
            None => Cow::Owned(products.iter().copied().collect()),
        };
        let mut rows = products.chunks_exact(self.item_ids.len().max(1));
        // Reused across the batch's users so that scoring allocates only the outputs.
        let mut scratch = if rows_wanted == 0 {
            TopN::default()
        } else {
            TopN {
                keys: Vec::with_capacity(self.item_ids.len()),
                best: BinaryHeap::with_capacity(MAX_N),
            }
        };

        requests
            .iter()
            .zip(&users)
            .enumerate()
            .map(|(at, (request, (known, scoring)))| {
                let n = request.n.min(MAX_N);
                let dots = scoring.and_then(|_| rows.next());
                match (scoring, dots) {
                    (Some((bias, _)), Some(dots)) => {
                        let rated = known.map_or(&[][..], |u| self.rated_of(u));
                        let seen = override_of(at).map_or(&[][..], |o| o.seen);
                        Recommendation {
                            items: self.top_n(*bias, rated, seen, dots, n, &mut scratch),
                            cold_start: false,
                        }
                    }
                    _ => Recommendation {
                        items: self
                            .popular
                            .iter()
                            .take(n)
                            .map(|&i| self.scored(i, self.item_base[i as usize]))
                            .collect(),
                        cold_start: true,
                    },
                }
            })
            .collect()
    }

    /// The model's user index of `uid`, if it knows the user.
    pub fn user_index(&self, uid: i64) -> Option<usize> {
        self.user_ids.binary_search(&uid).ok()
    }

    /// The model's item index of an external item id.
    pub fn item_index(&self, item: i64) -> Option<u32> {
        self.items.index.get(&item).copied()
    }

    /// Indices of the items known user `u` had rated at training time, ascending.
    pub fn rated_of(&self, u: usize) -> &[u32] {
        &self.rated_items[self.rated_start[u]..self.rated_start[u + 1]]
    }

    /// Known user `u`'s trained bias and factors.
    pub fn user_params(&self, u: usize) -> (f32, ndarray::ArrayView1<'_, f32>) {
        (self.user_bias[u], self.user_factors.row(u))
    }

    /// Item `i`'s factor vector (contiguous).
    pub fn item_factors(&self, i: u32) -> ndarray::ArrayView1<'_, f32> {
        self.items.rows.row(i as usize)
    }

    /// `μ + b_i`.
    pub fn item_base(&self, i: u32) -> f32 {
        self.item_base[i as usize]
    }

    pub fn global_mean(&self) -> f32 {
        self.global_mean
    }

    /// The external id of item index `i`.
    pub fn item_id(&self, i: u32) -> i64 {
        self.item_ids[i as usize]
    }

    /// The `n` best items the user has not rated (`rated`: the model's indices; `seen`: item
    /// ids learned since), given `dots[i] = q_i·p_u`, best first.
    ///
    /// Every item's key goes into a buffer first (a loop that vectorises); then one pass
    /// keeps the `n` best keys seen so far in a heap whose top is the worst of them. Nearly
    /// every key loses to that one on a single comparison, so the pass costs about a cycle
    /// an item, where a selection over all the keys costs several times that. Keys are
    /// unique, so the `n` best are the same set whichever way they are found.
    fn top_n(
        &self,
        bias: f32,
        rated: &[u32],
        seen: &[i64],
        dots: &[f32],
        n: usize,
        scratch: &mut TopN,
    ) -> Vec<ScoredItem<'_>> {
        if n == 0 {
            return Vec::new();
        }
        let TopN { keys, best } = scratch;
        keys.clear();
        keys.extend(
            dots.iter()
                .zip(&self.item_base)
                .enumerate()
                .map(|(i, (dot, base))| rank_key(base + bias + dot, i as u32)),
        );
        // Compile checked the indices.
        for &i in rated {
            keys[i as usize] = EXCLUDED;
        }
        for i in seen.iter().filter_map(|id| self.items.index.get(id)) {
            keys[*i as usize] = EXCLUDED;
        }
        best.clear();
        // Every real key is below this, so the first `n` of them get in; rated items never.
        let mut worst = EXCLUDED;
        for &key in keys.iter() {
            if key >= worst {
                continue;
            }
            if best.len() < n {
                best.push(key);
            } else if let Some(mut top) = best.peek_mut() {
                *top = key;
            }
            if best.len() == n {
                worst = best.peek().copied().unwrap_or(EXCLUDED);
            }
        }
        let sorted = std::mem::take(best).into_sorted_vec();
        let items = sorted
            .iter()
            .map(|&key| {
                let i = item_of(key);
                // The very expression the key was made from, so the very same number.
                let score = self.item_base[i as usize] + bias + dots[i as usize];
                self.scored(i, score)
            })
            .collect();
        // Back to an empty heap that keeps its allocation for the next user.
        let mut sorted = sorted;
        sorted.clear();
        *best = BinaryHeap::from(sorted);
        items
    }

    fn scored(&self, i: u32, score: f32) -> ScoredItem<'_> {
        let i = i as usize;
        ScoredItem {
            item: self.item_ids[i],
            score,
            title: self.titles.get(i).and_then(|t| t.as_deref()),
        }
    }

    pub fn n_users(&self) -> usize {
        self.user_bias.len()
    }

    pub fn n_items(&self) -> usize {
        self.item_ids.len()
    }

    pub fn factors(&self) -> usize {
        self.item_factors_t.nrows()
    }

    /// Extra metadata for `GET /model`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "users": self.n_users(),
            "items": self.n_items(),
            "factors": self.factors(),
            "global_mean": self.global_mean,
            "rated_pairs": self.rated_items.len(),
            "titles": !self.titles.is_empty(),
        })
    }
}

#[derive(Debug)]
struct ItemLookup {
    /// External item id → index, for feedback and for learned users' seen items.
    index: HashMap<i64, u32>,
    /// items × factors, the same numbers as `item_factors_t` row by row: folding a user in
    /// reads whole item vectors, which the transposed copy scatters one per cache line.
    rows: Array2<f32>,
}

/// Per request: the bias and factors that score the user, if any.
type Scoring<'a> = Option<(f32, &'a [f32])>;

/// Buffers `top_n` reuses from one user to the next.
#[derive(Debug, Default)]
struct TopN {
    /// One per item.
    keys: Vec<u64>,
    /// The best keys so far; the worst of them on top.
    best: BinaryHeap<u64>,
}

/// Marks a rated item: sorts after every real key (see `rank_key`).
const EXCLUDED: u64 = u64::MAX;

/// Packs a candidate into one integer that sorts best first: higher score, then smaller item
/// index, so that ties never depend on how the selection happened to partition. Comparing
/// plain integers makes the selection several times faster than comparing (score, index)
/// pairs. The score's bits are mapped so that unsigned order is `f32::total_cmp` order.
fn rank_key(score: f32, item: u32) -> u64 {
    let bits = score.to_bits();
    // Negative: all bits flipped; otherwise the sign bit set. Arithmetic rather than `if`,
    // so that computing a whole row of keys vectorises.
    let ordered = bits ^ ((bits as i32 >> 31) as u32 | 1 << 31);
    // Item indices are below u32::MAX (compile checks), so no key equals EXCLUDED.
    !((u64::from(ordered) << 32) | u64::from(u32::MAX - item))
}

fn item_of(key: u64) -> u32 {
    u32::MAX - (!key as u32)
}

/// Moves the distinct values of a sorted slice to its front; returns how many there are.
fn dedup_sorted(values: &mut [u32]) -> usize {
    let mut unique = 0;
    for i in 0..values.len() {
        if unique == 0 || values[i] != values[unique - 1] {
            values[unique] = values[i];
            unique += 1;
        }
    }
    unique
}

fn check_len(field: &str, actual: usize, expected: usize, of: &str) -> Result<(), ModelError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "{field} has {actual} entries but {of} calls for {expected}"
        )))
    }
}

fn check_finite(field: &str, values: &[f32]) -> Result<(), ModelError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => Err(ModelError::Invalid(format!(
            "{field}[{at}] is {}, not a finite number",
            values[at]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two users, four items, two factors; scores worked out by hand below.
    fn small() -> RecommenderSpec {
        RecommenderSpec {
            factors: 2,
            global_mean: 3.0,
            user_ids: vec![10, 20],
            user_bias: vec![0.5, -0.5],
            user_factors: vec![
                1.0, 0.0, // user 10 likes factor 0
                0.0, 1.0, // user 20 likes factor 1
            ],
            item_ids: vec![100, 200, 300, 400],
            item_bias: vec![0.0, 0.2, -0.2, 0.1],
            item_factors: vec![
                1.0, 0.0, // 100
                0.5, 0.5, // 200
                0.0, 1.0, // 300
                -1.0, 2.0, // 400
            ],
            item_titles: vec![Some("A".into()), None, Some("C".into()), Some("D".into())],
            rated: vec![vec![0], vec![1, 3]],
        }
    }

    fn ids(rec: &Recommendation<'_>) -> Vec<i64> {
        rec.items.iter().map(|s| s.item).collect()
    }

    #[test]
    fn scores_known_users_and_skips_what_they_rated() {
        let model = Recommender::compile(&small()).unwrap();
        let out = model.recommend_batch(&[Request { uid: 10, n: 3 }]);
        // User 10, item 100 rated. 200: 3+0.5+0.2+0.5 = 4.2; 300: 3+0.5-0.2+0 = 3.3;
        // 400: 3+0.5+0.1-1 = 2.6.
        assert!(!out[0].cold_start);
        assert_eq!(ids(&out[0]), vec![200, 300, 400]);
        let expected = [4.2, 3.3, 2.6];
        for (got, want) in out[0].items.iter().zip(expected) {
            assert!((got.score - want).abs() < 1e-5, "{got:?} vs {want}");
        }
        assert_eq!(out[0].items[0].title, None);
        assert_eq!(out[0].items[1].title, Some("C"));

        // User 20 rated 200 and 400; 300: 3-0.5-0.2+1 = 3.3 beats 100: 3-0.5+0+0 = 2.5.
        // Asking for more than remain returns what remains.
        let out = model.recommend_batch(&[Request { uid: 20, n: 10 }]);
        assert_eq!(ids(&out[0]), vec![300, 100]);
    }

    #[test]
    fn learned_users_are_scored_with_their_learned_factors_and_skip_what_they_saw() {
        let model = Recommender::compile(&small()).unwrap();
        let learned = [0.0f32, 1.0];
        let overrides = [
            // User 10 now likes factor 1 and has seen item 300 since training.
            Some(UserOverride {
                learned: Some((0.5, &learned[..])),
                seen: &[300],
            }),
            // An unknown user with learned factors is no longer a cold start.
            Some(UserOverride {
                learned: Some((0.0, &learned[..])),
                seen: &[],
            }),
            // Seen items alone (nothing learned): the model's factors, fewer items.
            Some(UserOverride {
                learned: None,
                seen: &[200],
            }),
            None,
        ];
        let out = model.recommend_batch_with(
            &[
                Request { uid: 10, n: 3 },
                Request { uid: 77, n: 4 },
                Request { uid: 10, n: 3 },
                Request { uid: 10, n: 3 },
            ],
            &overrides,
        );
        // 400: 3+0.5+0.1+2 = 5.6; 200: 3+0.5+0.2+0.5 = 4.2; 100 rated at training, 300 seen.
        assert_eq!(ids(&out[0]), vec![400, 200]);
        assert!((out[0].items[0].score - 5.6).abs() < 1e-5);
        assert!(!out[1].cold_start);
        assert_eq!(ids(&out[1]), vec![400, 300, 200, 100]);
        assert_eq!(ids(&out[2]), vec![300, 400]);
        assert_eq!(ids(&out[3]), vec![200, 300, 400]);
    }

    #[test]
    fn keeps_request_order_in_mixed_batches() {
        let model = Recommender::compile(&small()).unwrap();
        let out = model.recommend_batch(&[
            Request { uid: 20, n: 1 },
            Request { uid: 99, n: 2 },
            Request { uid: 10, n: 1 },
            Request { uid: 20, n: 2 },
        ]);
        assert_eq!(out.len(), 4);
        assert_eq!(ids(&out[0]), vec![300]);
        assert!(out[1].cold_start);
        assert_eq!(ids(&out[2]), vec![200]);
        assert_eq!(ids(&out[3]), vec![300, 100]);
        assert!(model.recommend_batch(&[]).is_empty());
    }

    #[test]
    fn the_order_of_users_in_the_file_does_not_matter() {
        let spec = small();
        let mut reversed = spec.clone();
        reversed.user_ids.reverse();
        reversed.user_bias.reverse();
        reversed.rated.reverse();
        reversed.user_factors = spec.user_factors[2..]
            .iter()
            .chain(&spec.user_factors[..2])
            .copied()
            .collect();
        let requests = [Request { uid: 10, n: 3 }, Request { uid: 20, n: 3 }];
        let (a, b) = (
            Recommender::compile(&spec).unwrap(),
            Recommender::compile(&reversed).unwrap(),
        );
        assert_eq!(b.recommend_batch(&requests), a.recommend_batch(&requests));
    }

    #[test]
    fn unknown_users_get_the_most_rated_items() {
        let mut spec = small();
        // Counts: 100 ×1, 200 ×2, 300 ×0, 400 ×2; 200 and 400 tie, 200 has the better bias.
        spec.rated = vec![vec![0, 1, 3, 3], vec![1, 3]];
        let model = Recommender::compile(&spec).unwrap();
        let out = model.recommend_batch(&[Request { uid: -1, n: 4 }]);
        assert!(out[0].cold_start);
        assert_eq!(ids(&out[0]), vec![200, 400, 100, 300]);
        assert!((out[0].items[0].score - 3.2).abs() < 1e-6);
        assert_eq!(out[0].items[1].title, Some("D"));
    }

    #[test]
    fn refuses_inconsistent_specs() {
        let refuse = |edit: &dyn Fn(&mut RecommenderSpec), why: &str| {
            let mut spec = small();
            edit(&mut spec);
            match Recommender::compile(&spec) {
                Err(ModelError::Invalid(msg)) => assert!(msg.contains(why), "{msg}"),
                other => panic!("expected Invalid({why}), got {other:?}"),
            }
        };
        refuse(
            &|s| {
                s.user_bias.pop();
            },
            "user_bias",
        );
        refuse(&|s| s.item_bias.push(0.0), "item_bias");
        refuse(
            &|s| {
                s.user_factors.pop();
            },
            "user_factors",
        );
        refuse(&|s| s.item_factors.push(0.0), "item_factors");
        refuse(&|s| s.rated.push(vec![]), "rated");
        refuse(
            &|s| {
                s.item_titles.pop();
            },
            "item_titles",
        );
        refuse(&|s| s.item_factors[3] = f32::NAN, "item_factors[3]");
        refuse(&|s| s.user_bias[1] = f32::INFINITY, "user_bias[1]");
        refuse(&|s| s.global_mean = f32::NAN, "global_mean");
        refuse(&|s| s.user_ids[1] = 10, "user id 10");
        refuse(&|s| s.item_ids[2] = 100, "item id 100");
        refuse(&|s| s.rated[1].push(4), "item index 4");
        refuse(&|s| s.factors = 3, "factors");
        refuse(
            &|s| {
                s.factors = 0;
                s.user_factors.clear();
                s.item_factors.clear();
            },
            "no factors",
        );
        refuse(
            &|s| {
                s.item_ids.clear();
                s.item_bias.clear();
                s.item_factors.clear();
                s.item_titles.clear();
                s.rated = vec![vec![], vec![]];
            },
            "no items",
        );

        // No titles at all is fine.
        let mut spec = small();
        spec.item_titles.clear();
        assert!(Recommender::compile(&spec).is_ok());
    }

    #[test]
    fn keys_sort_best_score_first_then_smallest_item() {
        let scores = [
            f32::NEG_INFINITY,
            -1e30,
            -1.5,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-45,
            0.5,
            3e38,
            f32::INFINITY,
        ];
        let mut pairs: Vec<(f32, u32)> = scores
            .iter()
            .flat_map(|&s| [(s, 0), (s, 7), (s, u32::MAX - 1)])
            .collect();
        let mut by_key = pairs.clone();
        by_key.sort_by_key(|&(s, i)| rank_key(s, i));
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let bits = |v: &[(f32, u32)]| v.iter().map(|(s, i)| (s.to_bits(), *i)).collect::<Vec<_>>();
        assert_eq!(bits(&by_key), bits(&pairs));
        assert!(by_key.iter().all(|&(s, i)| rank_key(s, i) < EXCLUDED));
        assert!(by_key.iter().all(|&(s, i)| item_of(rank_key(s, i)) == i));
    }

    #[test]
    fn top_n_is_the_head_of_every_unrated_item_sorted() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let (users, items) = (5, 300);
        // Few distinct values, so that many scores tie and the order falls to the item index.
        let mut pick = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| [-0.5, 0.0, 0.25, 1.0][rng.gen_range(0..4)])
                .collect()
        };
        let spec = RecommenderSpec {
            factors: 1,
            // Scores of both signs.
            global_mean: 0.0,
            user_ids: (0..users as i64).collect(),
            user_bias: pick(users),
            user_factors: pick(users),
            item_ids: (0..items as i64).map(|i| 1000 - i).collect(),
            item_bias: pick(items),
            item_factors: pick(items),
            item_titles: Vec::new(),
            // The last user has rated everything: nothing is left to recommend.
            rated: (0..users)
                .map(|u| {
                    (0..items as u32)
                        .filter(|i| u == users - 1 || (i * 7 + u as u32).is_multiple_of(5))
                        .collect()
                })
                .collect(),
        };
        let model = Recommender::compile(&spec).unwrap();
        let mut scratch = TopN::default();
        for u in 0..users {
            let dots: Vec<f32> = (0..items)
                .map(|_| [-1.0, 0.0, 0.5, 2.0][rng.gen_range(0..4)])
                .collect();
            let rated = &model.rated_items[model.rated_start[u]..model.rated_start[u + 1]];
            let mut all: Vec<(f32, usize)> = (0..items)
                .filter(|i| !rated.contains(&(*i as u32)))
                .map(|i| (model.item_base[i] + model.user_bias[u] + dots[i], i))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for n in [1, 3, 10, MAX_N, items + 5] {
                let got: Vec<(f32, i64)> = model
                    .top_n(model.user_bias[u], rated, &[], &dots, n, &mut scratch)
                    .iter()
                    .map(|s| (s.score, s.item))
                    .collect();
                let want: Vec<(f32, i64)> = all
                    .iter()
                    .take(n)
                    .map(|&(score, i)| (score, model.item_ids[i]))
                    .collect();
                assert_eq!(got, want, "user {u}, n {n}");
            }
        }
    }

    #[test]
    fn round_trips_through_json() {
        let spec = small();
        let json = serde_json::to_string(&spec).unwrap();
        let back: RecommenderSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let model = Recommender::compile(&back).unwrap();
        assert_eq!(model.describe()["items"], 4);
        assert_eq!(model.describe()["factors"], 2);
    }
}
