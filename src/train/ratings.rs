//! Synthetic ratings with a known answer, in the MovieLens 100k layout.
//!
//! Each rating is `μ + b_u + b_i + p_u·q_i + ε` with `ε ~ N(0, noise²)` and a planted latent
//! dimension `rank`. Ratings are written as real numbers, not rounded to whole stars:
//! rounding would add its own error on top of `ε`, whereas unrounded the best possible
//! model's RMSE is exactly `noise`, so a trained model can be judged against it. Items are
//! picked with Zipf-like popularity (as in real catalogues, a few items get most ratings)
//! so that recommending popular items to unknown users is meaningful, and users' activity
//! varies, with at least 20 ratings each when the total allows it, as in MovieLens.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::recommender::Rating;

#[derive(clap::Args, Debug)]
pub struct GenRatingsArgs {
    /// Number of users (ids 1..=users).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Number of items (ids 1..=items).
    #[arg(long, default_value_t = 1700)]
    pub items: usize,
    /// Number of ratings; each user rates each item at most once.
    #[arg(long, default_value_t = 100_000)]
    pub ratings: usize,
    /// Dimension of the planted user and item factors.
    #[arg(long, default_value_t = 5)]
    pub rank: usize,
    /// Standard deviation of the Gaussian noise added to every rating.
    #[arg(long, default_value_t = 0.5)]
    pub noise: f32,
    /// Seed of everything random: same seed and sizes, same files.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Directory to write `u.data` and `u.item` into.
    #[arg(long, value_name = "DIR", default_value = "training/synthetic")]
    pub out: PathBuf,
}

/// Mean rating, on MovieLens' 1–5 scale.
const GLOBAL_MEAN: f32 = 3.5;
const USER_BIAS_STD: f64 = 0.3;
const ITEM_BIAS_STD: f64 = 0.4;
/// Standard deviation of the planted interaction `p_u·q_i`, whatever the rank: large
/// enough that factors clearly beat biases alone.
const SIGNAL_STD: f64 = 1.0;
/// MovieLens only keeps users with at least 20 ratings.
const MIN_PER_USER: usize = 20;
/// Spread (log-normal sigma) of how many ratings users give beyond the minimum.
const ACTIVITY_SPREAD: f64 = 0.7;
/// Synthetic timestamps start where MovieLens 100k's do (September 1997).
const FIRST_TIMESTAMP: i64 = 874_724_710;
const TIMESTAMP_SPAN: i64 = 18_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenParams {
    pub users: usize,
    pub items: usize,
    pub ratings: usize,
    pub rank: usize,
    pub noise: f32,
    pub seed: u64,
    /// Zipf exponent of item popularity: the item of popularity rank `r` (from 1) is picked
    /// with weight `r^-popularity_skew`; 0 makes all items equally popular.
    pub popularity_skew: f64,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            users: 1000,
            items: 1700,
            ratings: 100_000,
            rank: 5,
            noise: 0.5,
            seed: 7,
            popularity_skew: 1.0,
        }
    }
}

impl From<&GenRatingsArgs> for GenParams {
    fn from(args: &GenRatingsArgs) -> Self {
        Self {
            users: args.users,
            items: args.items,
            ratings: args.ratings,
            rank: args.rank,
            noise: args.noise,
            seed: args.seed,
            ..Self::default()
        }
    }
}

/// Generated ratings and the planted model behind them. User and item ids are 1-based
/// positions in the per-user and per-item arrays.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub params: GenParams,
    pub global_mean: f32,
    pub user_bias: Vec<f32>,
    pub item_bias: Vec<f32>,
    /// Row-major users × rank.
    pub user_factors: Vec<f32>,
    /// Row-major items × rank.
    pub item_factors: Vec<f32>,
    /// Grouped by user.
    pub ratings: Vec<Rating>,
}

impl Synthetic {
    /// The planted, noise-free rating of `item` by `user`; `None` for an id out of range.
    pub fn true_score(&self, user: i64, item: i64) -> Option<f32> {
        let u = index(user, self.params.users)?;
        let i = index(item, self.params.items)?;
        let k = self.params.rank;
        let interaction: f32 = self.user_factors[u * k..(u + 1) * k]
            .iter()
            .zip(&self.item_factors[i * k..(i + 1) * k])
            .map(|(a, b)| a * b)
            .sum();
        Some(self.global_mean + self.user_bias[u] + self.item_bias[i] + interaction)
    }

    /// The `n` items with the best planted score for `user`, best first, leaving out those
    /// `exclude` says (typically the ones the user has rated).
    pub fn planted_top(&self, user: i64, n: usize, exclude: impl Fn(i64) -> bool) -> Vec<i64> {
        let mut scored: Vec<(f32, i64)> = (1..=self.params.items as i64)
            .filter(|&item| !exclude(item))
            .filter_map(|item| Some((self.true_score(user, item)?, item)))
            .collect();
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().take(n).map(|(_, item)| item).collect()
    }
}

fn index(id: i64, count: usize) -> Option<usize> {
    let i = usize::try_from(id).ok()?.checked_sub(1)?;
    (i < count).then_some(i)
}

/// A standard normal draw (Box–Muller), so that no distribution crate is needed.
pub(crate) fn gaussian<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // 1 - [0, 1) is in (0, 1], where the logarithm is finite.
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

pub fn generate(params: &GenParams) -> anyhow::Result<Synthetic> {
    let &GenParams {
        users,
        items,
        ratings: total,
        rank,
        noise,
        seed,
        popularity_skew,
    } = params;
    if users == 0 || items == 0 {
        bail!("there must be at least one user and one item");
    }
    if users.checked_mul(items).is_none_or(|pairs| total > pairs) {
        bail!("{total} ratings are more than {users} users × {items} items: each pair is rated once at most");
    }
    let cells = users.checked_add(items).and_then(|n| n.checked_mul(rank));
    if cells.is_none_or(|cells| cells > 1 << 30) {
        bail!("rank {rank} for {users} users and {items} items is too large");
    }
    if !(noise.is_finite() && noise >= 0.0) {
        bail!("the noise must be a standard deviation ≥ 0, not {noise}");
    }
    if !(popularity_skew.is_finite() && popularity_skew >= 0.0) {
        bail!("the popularity skew must be ≥ 0, not {popularity_skew}");
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut normal = |n: usize, std: f64| -> Vec<f32> {
        (0..n).map(|_| (gaussian(&mut rng) * std) as f32).collect()
    };
    let user_bias = normal(users, USER_BIAS_STD);
    let item_bias = normal(items, ITEM_BIAS_STD);
    // p·q sums `rank` products of two independent N(0, s²) draws, each of variance s⁴.
    let factor_std = if rank == 0 {
        0.0
    } else {
        (SIGNAL_STD * SIGNAL_STD / rank as f64).powf(0.25)
    };
    let user_factors = normal(users * rank, factor_std);
    let item_factors = normal(items * rank, factor_std);

    // Popularity ranks are shuffled so that id order says nothing about popularity.
    let mut popularity_rank: Vec<usize> = (0..items).collect();
    popularity_rank.shuffle(&mut rng);
    let weights: Vec<f64> = popularity_rank
        .iter()
        .map(|&r| ((r + 1) as f64).powf(-popularity_skew))
        .collect();
    let counts = user_counts(&mut rng, users, items, total);

    let mut synthetic = Synthetic {
        params: *params,
        global_mean: GLOBAL_MEAN,
        user_bias,
        item_bias,
        user_factors,
        item_factors,
        ratings: Vec::with_capacity(total),
    };
    let mut keys: Vec<(f64, usize)> = Vec::with_capacity(items);
    for (u, &count) in counts.iter().enumerate() {
        // Weighted sampling without replacement (Efraimidis–Spirakis): each item draws an
        // exponential "arrival time" scaled by its weight and the first `count` arrive.
        keys.clear();
        keys.extend(weights.iter().enumerate().map(|(i, w)| {
            let arrival = -(1.0 - rng.gen::<f64>()).ln();
            (arrival / w, i)
        }));
        if count < items {
            keys.select_nth_unstable_by(count, |a, b| a.0.total_cmp(&b.0));
        }
        for &(_, i) in &keys[..count] {
            let (user, item) = (u as i64 + 1, i as i64 + 1);
            let clean = synthetic.true_score(user, item).unwrap_or(GLOBAL_MEAN);
            let rating = clean + (gaussian(&mut rng) * f64::from(noise)) as f32;
            synthetic.ratings.push(Rating { user, item, rating });
        }
    }
    Ok(synthetic)
}

/// How many ratings each user gives: `MIN_PER_USER` (or an even share when the total is
/// smaller), plus a log-normally skewed share of the rest, capped at one per item.
fn user_counts<R: Rng>(rng: &mut R, users: usize, items: usize, total: usize) -> Vec<usize> {
    let floor = (total / users).min(MIN_PER_USER).min(items);
    let mut counts = vec![floor; users];
    let mut left = total - floor * users;
    let activity: Vec<f64> = (0..users)
        .map(|_| (ACTIVITY_SPREAD * gaussian(rng)).exp())
        .collect();
    while left > 0 {
        let open: Vec<usize> = (0..users).filter(|&u| counts[u] < items).collect();
        let open_weight: f64 = open.iter().map(|&u| activity[u]).sum();
        let mut given = 0;
        for &u in &open {
            let share = (left as f64 * activity[u] / open_weight).floor() as usize;
            let add = share.min(items - counts[u]);
            counts[u] += add;
            given += add;
        }
        left -= given;
        if given == 0 {
            // Too few left to split proportionally: one more each to the most active.
            let mut open = open;
            open.sort_unstable_by(|&a, &b| activity[b].total_cmp(&activity[a]));
            for u in open.into_iter().take(left) {
                counts[u] += 1;
                left -= 1;
            }
        }
    }
    counts
}

/// The timestamp of each rating, as `write` puts them in `u.data`: uniform over the span,
/// from their own random stream so that they do not shift the ratings.
pub fn timestamps(synthetic: &Synthetic) -> Vec<i64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(synthetic.params.seed ^ 0x7469_6d65);
    synthetic
        .ratings
        .iter()
        .map(|_| FIRST_TIMESTAMP + rng.gen_range(0..TIMESTAMP_SPAN))
        .collect()
}

/// Writes `dir/u.data` (tab-separated `user item rating timestamp`) and `dir/u.item`
/// (`id|title|release date|video release date|URL|19 genre flags`), as in MovieLens 100k.
pub fn write(synthetic: &Synthetic, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data_path = dir.join("u.data");
    write_lines(&data_path, |out| {
        for (r, timestamp) in synthetic.ratings.iter().zip(timestamps(synthetic)) {
            // `{}` on f32 prints the shortest text that reads back as the same number.
            writeln!(out, "{}\t{}\t{}\t{timestamp}", r.user, r.item, r.rating)?;
        }
        Ok(())
    })?;
    let item_path = dir.join("u.item");
    let no_genres = ["0"; 19].join("|");
    write_lines(&item_path, |out| {
        for id in 1..=synthetic.params.items {
            writeln!(out, "{id}|Synthetic item {id}|01-Jan-1995|||{no_genres}")?;
        }
        Ok(())
    })?;
    Ok(())
}

fn write_lines(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    body(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: &GenRatingsArgs) -> anyhow::Result<()> {
    let params = GenParams::from(args);
    let synthetic = generate(&params)?;
    write(&synthetic, &args.out)?;
    println!(
        "wrote {} ratings by {} users of {} items to {} (u.data, u.item): planted rank {}, \
         noise σ {} (ratings are not rounded, so the best achievable RMSE is {})",
        synthetic.ratings.len(),
        params.users,
        params.items,
        args.out.display(),
        params.rank,
        params.noise,
        params.noise
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::train::recommender::{read_ratings, read_titles};

    fn small() -> GenParams {
        GenParams {
            users: 60,
            items: 80,
            ratings: 3000,
            rank: 3,
            noise: 0.5,
            seed: 3,
            ..GenParams::default()
        }
    }

    #[test]
    fn gives_each_pair_at_most_once_and_exactly_as_many_as_asked() {
        let s = generate(&small()).unwrap();
        assert_eq!(s.ratings.len(), 3000);
        let pairs: HashSet<(i64, i64)> = s.ratings.iter().map(|r| (r.user, r.item)).collect();
        assert_eq!(pairs.len(), 3000);
        let mut per_user: HashMap<i64, usize> = HashMap::new();
        for r in &s.ratings {
            assert!(
                (1..=60).contains(&r.user) && (1..=80).contains(&r.item),
                "{r:?}"
            );
            *per_user.entry(r.user).or_default() += 1;
        }
        assert_eq!(per_user.len(), 60);
        assert!(per_user.values().all(|&c| c >= MIN_PER_USER));

        // Every pair, and fewer ratings than users.
        let all = generate(&GenParams {
            users: 3,
            items: 4,
            ratings: 12,
            ..small()
        })
        .unwrap();
        assert_eq!(all.ratings.len(), 12);
        let few = generate(&GenParams {
            ratings: 7,
            ..small()
        })
        .unwrap();
        assert_eq!(few.ratings.len(), 7);
    }

    #[test]
    fn adds_exactly_the_planted_noise() {
        let s = generate(&GenParams {
            ratings: 4000,
            noise: 0.3,
            ..small()
        })
        .unwrap();
        let residuals: Vec<f64> = s
            .ratings
            .iter()
            .map(|r| f64::from(r.rating - s.true_score(r.user, r.item).unwrap()))
            .collect();
        let n = residuals.len() as f64;
        let mean = residuals.iter().sum::<f64>() / n;
        let std = (residuals.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((std - 0.3).abs() < 0.015, "std {std}");

        // The planted signal dominates the noise, so there is something to learn.
        let clean: Vec<f64> = s
            .ratings
            .iter()
            .map(|r| f64::from(s.true_score(r.user, r.item).unwrap()))
            .collect();
        let clean_mean = clean.iter().sum::<f64>() / n;
        let clean_std = (clean.iter().map(|v| (v - clean_mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(clean_std > 0.9, "{clean_std}");
        assert!((clean_mean - 3.5).abs() < 0.3, "{clean_mean}");
    }

    #[test]
    fn skews_item_popularity() {
        let s = generate(&GenParams {
            users: 200,
            items: 300,
            ratings: 8000,
            ..small()
        })
        .unwrap();
        let mut counts = vec![0usize; 300];
        for r in &s.ratings {
            counts[r.item as usize - 1] += 1;
        }
        counts.sort_unstable();
        let median = counts[150];
        assert!(
            counts[299] > 5 * median.max(1),
            "top {} median {median}",
            counts[299]
        );
    }

    #[test]
    fn is_reproducible_by_seed() {
        let a = generate(&small()).unwrap();
        let b = generate(&small()).unwrap();
        assert_eq!(a.ratings, b.ratings);
        let c = generate(&GenParams { seed: 4, ..small() }).unwrap();
        assert_ne!(a.ratings, c.ratings);
    }

    #[test]
    fn ranks_planted_favourites() {
        let s = generate(&small()).unwrap();
        let top = s.planted_top(5, 3, |item| item == 1);
        assert_eq!(top.len(), 3);
        assert!(!top.contains(&1));
        let scores: Vec<f32> = top.iter().map(|&i| s.true_score(5, i).unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        let best_other = (2..=80)
            .filter(|i| !top.contains(i))
            .map(|i| s.true_score(5, i).unwrap())
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(best_other <= scores[2]);
        assert_eq!(s.true_score(0, 1), None);
        assert_eq!(s.true_score(1, 81), None);
    }

    #[test]
    fn refuses_impossible_requests() {
        assert!(generate(&GenParams {
            ratings: 60 * 80 + 1,
            ..small()
        })
        .is_err());
        assert!(generate(&GenParams {
            users: 0,
            ..small()
        })
        .is_err());
        assert!(generate(&GenParams {
            noise: f32::NAN,
            ..small()
        })
        .is_err());
        assert!(generate(&GenParams {
            rank: usize::MAX,
            ..small()
        })
        .is_err());
    }

    #[test]
    fn writes_files_the_trainer_reads_back() {
        let s = generate(&small()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("synthetic");
        write(&s, &out).unwrap();
        assert_eq!(read_ratings(&out.join("u.data")).unwrap(), s.ratings);
        let titles = read_titles(&out.join("u.item")).unwrap();
        assert_eq!(titles.len(), 80);
        assert_eq!(titles[&17], "Synthetic item 17");
    }
}
