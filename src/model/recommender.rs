//! Matrix-factorization recommender: biased MF as in surprise's SVD.
//!
//! A user's predicted rating of an item is `μ + b_u + b_i + q_i·p_u`. The model file stores
//! the factors as flat row-major arrays (the shape training produces); compiling validates
//! them and keeps the item factors as one contiguous (factors × items) matrix, so that all
//! the known users of a batch are scored by a single matrix product, after which each
//! user's top `n` is a partial selection (a bounded heap) rather than a sort of every item.
//!
//! A user the model has never seen gets the most-rated items instead (`cold_start`), scored
//! by their baseline `μ + b_i`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use ndarray::{Array2, ArrayView1, Axis};
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

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation<'a> {
    pub items: Vec<ScoredItem<'a>>,
    /// The user was unknown, so these are the most popular items rather than personal ones.
    pub cold_start: bool,
}

/// The scoring form of a recommender.
#[derive(Debug)]
pub struct Recommender {
    factors: usize,
    global_mean: f32,
    user_index: HashMap<i64, u32>,
    user_bias: Vec<f32>,
    /// users × factors.
    user_factors: Array2<f32>,
    item_ids: Vec<i64>,
    /// `μ + b_i`, so that scoring adds one term per item instead of two.
    item_base: Vec<f32>,
    /// factors × items, contiguous: the right-hand side of the batch product.
    item_factors_t: Array2<f32>,
    /// Empty, or one per item.
    titles: Vec<Option<String>>,
    /// User `u`'s rated items are `rated_items[rated_start[u]..rated_start[u + 1]]`, sorted
    /// ascending so that scoring can skip them with a merge instead of a lookup per item.
    rated_start: Vec<usize>,
    rated_items: Vec<u32>,
    /// Up to `MAX_N` item indices, most popular first.
    popular: Vec<u32>,
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
        // Item indices are stored as u32; user indices share the type to keep maps small.
        if n_items > u32::MAX as usize || n_users > u32::MAX as usize {
            return Err(invalid("the recommender has too many users or items".into()));
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
        check_len("user_factors", spec.user_factors.len(), user_cells, "users × factors")?;
        check_len("item_factors", spec.item_factors.len(), item_cells, "items × factors")?;
        if !spec.item_titles.is_empty() {
            check_len("item_titles", spec.item_titles.len(), n_items, "item_ids")?;
        }
        check_finite("user_bias", &spec.user_bias)?;
        check_finite("item_bias", &spec.item_bias)?;
        check_finite("user_factors", &spec.user_factors)?;
        check_finite("item_factors", &spec.item_factors)?;

        let mut user_index = HashMap::with_capacity(n_users);
        for (u, &uid) in spec.user_ids.iter().enumerate() {
            if user_index.insert(uid, u as u32).is_some() {
                return Err(invalid(format!("user id {uid} appears more than once")));
            }
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
        for (u, list) in spec.rated.iter().enumerate() {
            let start = rated_items.len();
            for &i in list {
                if i as usize >= n_items {
                    return Err(invalid(format!(
                        "user {} rated item index {i}, but there are only {n_items} items",
                        spec.user_ids[u]
                    )));
                }
                rated_items.push(i);
            }
            let mine = &mut rated_items[start..];
            mine.sort_unstable();
            let unique = dedup_sorted(mine);
            rated_items.truncate(start + unique);
            for &i in &rated_items[start..] {
                rating_counts[i as usize] += 1;
            }
            rated_start.push(rated_items.len());
        }

        let item_base: Vec<f32> = spec.item_bias.iter().map(|b| spec.global_mean + b).collect();
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

        let user_factors = Array2::from_shape_vec((n_users, k), spec.user_factors.clone())
            .map_err(|e| invalid(format!("user_factors: {e}")))?;
        let item_factors_t = Array2::from_shape_vec((n_items, k), spec.item_factors.clone())
            .map_err(|e| invalid(format!("item_factors: {e}")))?
            .reversed_axes()
            .as_standard_layout()
            .into_owned();

        Ok(Self {
            factors: k,
            global_mean: spec.global_mean,
            user_index,
            user_bias: spec.user_bias.clone(),
            user_factors,
            item_ids: spec.item_ids.clone(),
            item_base,
            item_factors_t,
            titles: spec.item_titles.clone(),
            rated_start,
            rated_items,
            popular: by_popularity,
        })
    }

    /// One recommendation per request, in request order. The known users' factor vectors
    /// are gathered into one (batch × factors) matrix and multiplied by the item factors in
    /// a single product: far faster than a dot product per user and item.
    pub fn recommend_batch(&self, requests: &[Request]) -> Vec<Recommendation<'_>> {
        let users: Vec<Option<usize>> = requests
            .iter()
            .map(|r| self.user_index.get(&r.uid).map(|&u| u as usize))
            .collect();
        let known: Vec<usize> = users.iter().flatten().copied().collect();
        let scores = if known.is_empty() {
            None
        } else {
            Some(
                self.user_factors
                    .select(Axis(0), &known)
                    .dot(&self.item_factors_t),
            )
        };
        // Reused across the batch's users so that scoring allocates only the outputs.
        let mut kept = BinaryHeap::with_capacity(if known.is_empty() { 0 } else { MAX_N });

        let mut row = 0;
        requests
            .iter()
            .zip(&users)
            .map(|(request, user)| {
                let n = request.n.min(MAX_N);
                match (user, &scores) {
                    (Some(u), Some(scores)) => {
                        let dots = scores.row(row);
                        row += 1;
                        Recommendation {
                            items: self.top_n(*u, dots, n, &mut kept),
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

    /// The `n` best items user `u` has not rated, given `dots[i] = q_i·p_u`: one pass over
    /// the items keeping the best `n` so far in a bounded heap, so that most items cost a
    /// single comparison with the worst one kept, and only the `n` kept are ever sorted.
    fn top_n(
        &self,
        u: usize,
        dots: ArrayView1<'_, f32>,
        n: usize,
        kept: &mut BinaryHeap<Kept>,
    ) -> Vec<ScoredItem<'_>> {
        kept.clear();
        if n == 0 {
            return Vec::new();
        }
        let bias = self.user_bias[u];
        let mut rated = self.rated_items[self.rated_start[u]..self.rated_start[u + 1]]
            .iter()
            .copied()
            .peekable();
        for (i, (&dot, &base)) in dots.iter().zip(&self.item_base).enumerate() {
            let i = i as u32;
            if rated.peek() == Some(&i) {
                rated.next();
                continue;
            }
            let score = base + bias + dot;
            if kept.len() < n {
                kept.push(Kept(score, i));
            } else if let Some(mut worst) = kept.peek_mut() {
                // Items come in index order, so a later item only displaces the worst kept
                // one with a strictly higher score: ties go to the smaller index.
                if score > worst.0 {
                    *worst = Kept(score, i);
                }
            }
        }
        // Sorting through the heap's own buffer, then handing the buffer back, keeps its
        // allocation for the next user.
        let mut best = std::mem::take(kept).into_sorted_vec();
        let items = best.iter().map(|k| self.scored(k.1, k.0)).collect();
        best.clear();
        *kept = BinaryHeap::from(best);
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
        self.factors
    }

    /// Extra metadata for `GET /model`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "users": self.n_users(),
            "items": self.n_items(),
            "factors": self.factors,
            "global_mean": self.global_mean,
            "rated_pairs": self.rated_items.len(),
            "titles": !self.titles.is_empty(),
        })
    }
}

/// A candidate `(score, item index)`, ordered best first: higher score, then smaller index,
/// so that results never depend on the order the heap happened to see equal scores in.
/// `BinaryHeap` is a max-heap, so its top is the worst candidate kept: the one to evict.
#[derive(Debug, Clone, Copy)]
struct Kept(f32, u32);

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Kept {}

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
        refuse(&|s| {
            s.user_bias.pop();
        }, "user_bias");
        refuse(&|s| s.item_bias.push(0.0), "item_bias");
        refuse(&|s| {
            s.user_factors.pop();
        }, "user_factors");
        refuse(&|s| s.item_factors.push(0.0), "item_factors");
        refuse(&|s| s.rated.push(vec![]), "rated");
        refuse(&|s| {
            s.item_titles.pop();
        }, "item_titles");
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

    /// `cargo test --release --lib recommender::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, meaningful only in a release build"]
    fn speed() {
        use rand::{Rng, SeedableRng};
        let (users, items, k) = (1000usize, 1700usize, 100usize);
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-0.3..0.3)).collect() };
        let spec = RecommenderSpec {
            factors: k,
            global_mean: 3.5,
            user_ids: (1..=users as i64).collect(),
            user_bias: random(users),
            user_factors: random(users * k),
            item_ids: (1..=items as i64).collect(),
            item_bias: random(items),
            item_factors: random(items * k),
            item_titles: (1..=items).map(|i| Some(format!("Item {i}"))).collect(),
            rated: (0..users)
                .map(|u| (0..100).map(|j| ((u * 7 + j * 17) % items) as u32).collect())
                .collect(),
        };
        let model = Recommender::compile(&spec).unwrap();
        let batch: Vec<Request> = (0..256).map(|b| Request { uid: (b * 3 % users) as i64 + 1, n: 10 }).collect();
        let rounds = 200;
        let started = std::time::Instant::now();
        let mut total = 0;
        for _ in 0..rounds {
            total += model.recommend_batch(&batch).len();
        }
        let per_user = started.elapsed() / (rounds * batch.len()) as u32;
        eprintln!("{per_user:?} per user at batch 256, {k} factors, {items} items");
        assert_eq!(total, rounds * batch.len());
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
