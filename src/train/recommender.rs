//! Training the matrix-factorization recommender from MovieLens-style ratings.
//!
//! The algorithm is surprise's SVD (biased matrix factorization fitted by SGD), except that
//! the ratings are reshuffled every epoch. The model is fitted on the train split only and
//! shipped as is, so the test figures in its metadata describe exactly the shipped model.
//! The baseline it is compared with is the same SGD with no factors (`μ + b_u + b_i`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use super::progress;
use super::ratings::gaussian;
use crate::model::{ModelBody, ModelFile, ModelMeta, RecommenderSpec};

#[derive(clap::Args, Debug)]
pub struct TrainRecommenderArgs {
    /// Ratings file: MovieLens 100k `u.data` (tab-separated `user item rating timestamp`),
    /// `ratings.csv` (`userId,movieId,rating,timestamp` with a header) or 1M `ratings.dat`
    /// (`::`-separated); the layout is detected.
    #[arg(long, value_name = "FILE")]
    pub ratings: PathBuf,
    /// Item titles: MovieLens `u.item` (`id|title|...`) or `movies.csv` (`movieId,title,...`).
    #[arg(long, value_name = "FILE")]
    pub items: Option<PathBuf>,
    /// Where to write the model file.
    #[arg(long, value_name = "PATH", default_value = "models/recommender.json")]
    pub out: PathBuf,
    /// Length of the user and item factor vectors.
    #[arg(long, default_value_t = 100)]
    pub factors: usize,
    /// Passes of SGD over the training ratings.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.005)]
    pub lr: f32,
    /// L2 regularisation of biases and factors.
    #[arg(long, default_value_t = 0.02)]
    pub reg: f32,
    /// Share of the ratings held out to measure the model.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Seed of the split, the initial factors and the SGD order: same seed and data, same model.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Upper bound on (users + items) × factors: 4 GiB of f32 factors.
const MAX_FACTOR_CELLS: usize = 1 << 30;

/// One user's rating of one item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rating {
    pub user: i64,
    pub item: i64,
    pub rating: f32,
}

/// Hyperparameters of the SGD fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MfParams {
    pub factors: usize,
    pub epochs: usize,
    pub lr: f32,
    pub reg: f32,
    /// Standard deviation of the zero-mean normal the factors start from (surprise's 0.1).
    pub init_std: f32,
    pub seed: u64,
}

impl Default for MfParams {
    fn default() -> Self {
        Self {
            factors: 100,
            epochs: 20,
            lr: 0.005,
            reg: 0.02,
            init_std: 0.1,
            seed: 42,
        }
    }
}

impl MfParams {
    fn check(&self) -> anyhow::Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!(
                "the learning rate must be a positive number, not {}",
                self.lr
            );
        }
        if !(self.reg.is_finite() && self.reg >= 0.0) {
            bail!("the regularisation must be a number ≥ 0, not {}", self.reg);
        }
        if self.epochs == 0 {
            bail!("training needs at least one epoch");
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            bail!(
                "the initial factor spread must be ≥ 0, not {}",
                self.init_std
            );
        }
        Ok(())
    }
}

/// A fitted model: the arrays of a `RecommenderSpec`, plus id lookups for prediction.
#[derive(Debug, Clone)]
pub struct FittedMf {
    pub factors: usize,
    pub global_mean: f32,
    /// Ascending; a user's position is their index in the other per-user arrays.
    pub user_ids: Vec<i64>,
    pub item_ids: Vec<i64>,
    pub user_bias: Vec<f32>,
    pub item_bias: Vec<f32>,
    /// Row-major users × factors.
    pub user_factors: Vec<f32>,
    /// Row-major items × factors.
    pub item_factors: Vec<f32>,
    /// Lowest and highest training rating: predictions are clipped to them for evaluation,
    /// as surprise does.
    pub rating_range: (f32, f32),
    /// RMSE over the last epoch's updates (each measured just before its own update).
    pub train_rmse: f64,
    user_index: HashMap<i64, usize>,
    item_index: HashMap<i64, usize>,
}

impl FittedMf {
    pub fn user_index(&self, user: i64) -> Option<usize> {
        self.user_index.get(&user).copied()
    }

    pub fn item_index(&self, item: i64) -> Option<usize> {
        self.item_index.get(&item).copied()
    }

    /// The predicted rating, unclipped. An unknown user or item contributes no bias and no
    /// factors, so a pair the model knows nothing about gets `μ` (surprise's convention).
    pub fn predict(&self, user: i64, item: i64) -> f32 {
        let k = self.factors;
        let u = self.user_index(user);
        let i = self.item_index(item);
        let mut estimate = self.global_mean;
        if let Some(u) = u {
            estimate += self.user_bias[u];
        }
        if let Some(i) = i {
            estimate += self.item_bias[i];
        }
        if let (Some(u), Some(i)) = (u, i) {
            estimate += dot(
                &self.user_factors[u * k..(u + 1) * k],
                &self.item_factors[i * k..(i + 1) * k],
            );
        }
        estimate
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits biased MF by SGD with surprise's update rules, over the ratings reshuffled each
/// epoch. Deterministic for given ratings (in a given order) and parameters.
pub fn fit(ratings: &[Rating], params: &MfParams, progress: bool) -> FittedMf {
    let mut user_ids: Vec<i64> = ratings.iter().map(|r| r.user).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let mut item_ids: Vec<i64> = ratings.iter().map(|r| r.item).collect();
    item_ids.sort_unstable();
    item_ids.dedup();
    let user_index: HashMap<i64, usize> = user_ids
        .iter()
        .enumerate()
        .map(|(u, &id)| (id, u))
        .collect();
    let item_index: HashMap<i64, usize> = item_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    // invariant: every id was just inserted into both maps, so these lookups cannot miss.
    let triples: Vec<(usize, usize, f32)> = ratings
        .iter()
        .map(|r| (user_index[&r.user], item_index[&r.item], r.rating))
        .collect();

    let global_mean = if ratings.is_empty() {
        0.0
    } else {
        (ratings.iter().map(|r| f64::from(r.rating)).sum::<f64>() / ratings.len() as f64) as f32
    };
    let rating_range = ratings
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r.rating), hi.max(r.rating))
        });

    let k = params.factors;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
    let init_std = f64::from(params.init_std);
    let mut init = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (gaussian(&mut rng) * init_std) as f32)
            .collect()
    };
    let mut pu = init(user_ids.len() * k);
    let mut qi = init(item_ids.len() * k);
    let mut bu = vec![0f32; user_ids.len()];
    let mut bi = vec![0f32; item_ids.len()];

    let (lr, reg) = (params.lr, params.reg);
    let mut order: Vec<usize> = (0..triples.len()).collect();
    let bar = progress.then(|| progress::bar(params.epochs as u64, "training"));
    let mut train_rmse = f64::NAN;
    for _ in 0..params.epochs {
        order.shuffle(&mut rng);
        let mut squared = 0f64;
        for &t in &order {
            let (u, i, r) = triples[t];
            let p = &mut pu[u * k..(u + 1) * k];
            let q = &mut qi[i * k..(i + 1) * k];
            let err = r - (global_mean + bu[u] + bi[i] + dot(p, q));
            squared += f64::from(err * err);
            bu[u] += lr * (err - reg * bu[u]);
            bi[i] += lr * (err - reg * bi[i]);
            // Both updates must see the factors as they were before this rating.
            for (pf, qf) in p.iter_mut().zip(q.iter_mut()) {
                let (puf, qif) = (*pf, *qf);
                *pf += lr * (err * qif - reg * puf);
                *qf += lr * (err * puf - reg * qif);
            }
        }
        train_rmse = (squared / triples.len().max(1) as f64).sqrt();
        if let Some(bar) = &bar {
            bar.set_message(format!("rmse {train_rmse:.4}"));
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }

    FittedMf {
        factors: k,
        global_mean,
        user_ids,
        item_ids,
        user_bias: bu,
        item_bias: bi,
        user_factors: pu,
        item_factors: qi,
        rating_range,
        train_rmse,
        user_index,
        item_index,
    }
}

/// Prediction error over held-out ratings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub rmse: f64,
    pub mae: f64,
    pub n: usize,
}

/// RMSE and MAE of the model's predictions, clipped to the training rating range.
pub fn evaluate(model: &FittedMf, test: &[Rating]) -> Accuracy {
    let (lo, hi) = model.rating_range;
    let (mut squared, mut absolute) = (0f64, 0f64);
    for r in test {
        let mut estimate = model.predict(r.user, r.item);
        if lo <= hi {
            estimate = estimate.clamp(lo, hi);
        }
        let err = f64::from(r.rating - estimate);
        squared += err * err;
        absolute += err.abs();
    }
    let n = test.len();
    let denominator = n.max(1) as f64;
    Accuracy {
        rmse: (squared / denominator).sqrt(),
        mae: absolute / denominator,
        n,
    }
}

/// Shuffles the ratings with `seed` and holds out `test_fraction` of them.
pub fn split(ratings: &[Rating], test_fraction: f64, seed: u64) -> (Vec<Rating>, Vec<Rating>) {
    let mut shuffled = ratings.to_vec();
    shuffled.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed));
    let n_test = ((ratings.len() as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let train = shuffled.split_off(n_test.min(shuffled.len()));
    (train, shuffled)
}

/// The model-file form of a fitted model. `seen` are the ratings whose items must never be
/// recommended back to their user and that rank items by popularity: all the ratings known,
/// held-out ones included, since the user has seen those items too. Ratings of users or
/// items the model does not know are ignored.
pub fn build_spec(
    model: &FittedMf,
    seen: &[Rating],
    titles: &HashMap<i64, String>,
) -> RecommenderSpec {
    let mut rated: Vec<Vec<u32>> = vec![Vec::new(); model.user_ids.len()];
    for r in seen {
        if let (Some(u), Some(i)) = (model.user_index(r.user), model.item_index(r.item)) {
            rated[u].push(i as u32);
        }
    }
    for list in &mut rated {
        list.sort_unstable();
        list.dedup();
    }
    let item_titles = if titles.is_empty() {
        Vec::new()
    } else {
        model
            .item_ids
            .iter()
            .map(|id| titles.get(id).cloned())
            .collect()
    };
    RecommenderSpec {
        factors: model.factors,
        global_mean: model.global_mean,
        user_ids: model.user_ids.clone(),
        user_bias: model.user_bias.clone(),
        user_factors: model.user_factors.clone(),
        item_ids: model.item_ids.clone(),
        item_bias: model.item_bias.clone(),
        item_factors: model.item_factors.clone(),
        item_titles,
        rated,
    }
}

/// What a training run produced: the model file and its figures.
#[derive(Debug, Clone)]
pub struct Trained {
    pub file: ModelFile,
    pub model: Accuracy,
    pub baseline: Accuracy,
    pub train_ratings: usize,
}

/// Splits, fits the model and the bias-only baseline on the train split, measures both on
/// the test split and wraps the model in a model file.
pub fn train(
    ratings: &[Rating],
    titles: &HashMap<i64, String>,
    params: &MfParams,
    test_fraction: f64,
    progress: bool,
) -> anyhow::Result<Trained> {
    params.check()?;
    if params.factors == 0 {
        bail!("the model needs at least one factor");
    }
    if !(0.0..1.0).contains(&test_fraction) {
        bail!("the test fraction must be in [0, 1), not {test_fraction}");
    }
    let (train_set, test_set) = split(ratings, test_fraction, params.seed);
    if train_set.is_empty() {
        bail!("there are no ratings to train on");
    }
    // Every user and item of the train split gets a factor vector: refuse sizes that could
    // not be allocated rather than abort.
    let ids = |id: fn(&Rating) -> i64| {
        let mut ids: Vec<i64> = train_set.iter().map(id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let (users, items) = (ids(|r| r.user), ids(|r| r.item));
    let cells = users
        .checked_add(items)
        .and_then(|n| n.checked_mul(params.factors));
    if cells.is_none_or(|cells| cells > MAX_FACTOR_CELLS) {
        bail!(
            "{} factors for {users} users and {items} items is too large a model",
            params.factors
        );
    }
    let model = fit(&train_set, params, progress);
    let finite = |values: &[f32]| values.iter().all(|v| v.is_finite());
    let diverged = !(finite(&model.user_bias)
        && finite(&model.item_bias)
        && finite(&model.user_factors)
        && finite(&model.item_factors));
    if diverged {
        bail!(
            "training diverged (factors overflowed): lower the learning rate ({})",
            params.lr
        );
    }
    let baseline_params = MfParams {
        factors: 0,
        ..*params
    };
    let baseline = fit(&train_set, &baseline_params, false);
    let model_accuracy = evaluate(&model, &test_set);
    let baseline_accuracy = evaluate(&baseline, &test_set);

    let mut metrics = BTreeMap::new();
    // JSON has no NaN: a non-finite figure would make the model file unreadable.
    let mut metric = |name: &str, value: f64| {
        if value.is_finite() {
            metrics.insert(name.to_string(), short(value));
        }
    };
    metric("train_ratings", train_set.len() as f64);
    metric("test_ratings", test_set.len() as f64);
    metric("train_rmse", model.train_rmse);
    if !test_set.is_empty() {
        metric("test_rmse", model_accuracy.rmse);
        metric("test_mae", model_accuracy.mae);
        metric("baseline_rmse", baseline_accuracy.rmse);
        metric("baseline_mae", baseline_accuracy.mae);
    }
    let meta = ModelMeta {
        features: vec!["uid".to_string()],
        classes: Vec::new(),
        params: serde_json::json!({
            "algorithm": "biased matrix factorization (surprise SVD), SGD",
            "factors": params.factors,
            "epochs": params.epochs,
            "lr": decimal(params.lr),
            "reg": decimal(params.reg),
            "init_std": decimal(params.init_std),
            "seed": params.seed,
            "test_fraction": test_fraction,
            "baseline": "biases only, same SGD without factors",
        }),
        metrics,
    };
    let spec = build_spec(&model, ratings, titles);
    Ok(Trained {
        file: ModelFile::new(meta, ModelBody::MatrixFactorization(spec)),
        model: model_accuracy,
        baseline: baseline_accuracy,
        train_ratings: train_set.len(),
    })
}

/// Rounds a figure to six decimals: as many as anyone reads, and short decimals survive a
/// JSON round trip exactly whatever the reader, so the model file's content hash holds.
fn short(value: f64) -> f64 {
    if value.is_finite() && value.abs() < 1e9 {
        (value * 1e6).round() / 1e6
    } else {
        value
    }
}

/// An f32 hyperparameter as the decimal it was given as (0.01, not 0.009999999776482582).
fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

pub fn run(args: &TrainRecommenderArgs) -> anyhow::Result<()> {
    let ratings = read_ratings(&args.ratings)?;
    let titles = match &args.items {
        Some(path) => read_titles(path)?,
        None => HashMap::new(),
    };
    let params = MfParams {
        factors: args.factors,
        epochs: args.epochs,
        lr: args.lr,
        reg: args.reg,
        seed: args.seed,
        ..MfParams::default()
    };
    println!(
        "read {} ratings from {}{}",
        ratings.len(),
        args.ratings.display(),
        if titles.is_empty() {
            String::new()
        } else {
            format!(" and {} titles", titles.len())
        }
    );
    let trained = train(&ratings, &titles, &params, args.test_fraction, true)?;
    if trained.model.n > 0 {
        println!(
            "test set ({} ratings): model RMSE {:.4}, MAE {:.4}; \
             baseline (biases only, same SGD) RMSE {:.4}, MAE {:.4}",
            trained.model.n,
            trained.model.rmse,
            trained.model.mae,
            trained.baseline.rmse,
            trained.baseline.mae
        );
    } else {
        println!("no test set: nothing to measure");
    }
    trained.file.write(&args.out)?;
    println!(
        "wrote {} (version {}, trained on {} ratings)",
        args.out.display(),
        trained.file.version,
        trained.train_ratings
    );
    Ok(())
}

/// Reads a ratings file in any of the MovieLens layouts (see `parse_ratings`).
pub fn read_ratings(path: &Path) -> anyhow::Result<Vec<Rating>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read ratings file {}", path.display()))?;
    parse_ratings(&bytes).with_context(|| format!("ratings file {}", path.display()))
}

/// Parses `user item rating [timestamp]` lines, detecting the layout from the first line:
/// tab-separated without a header (100k `u.data`), `::`-separated (1M `ratings.dat`) or
/// comma-separated with an optional `userId,movieId,rating,timestamp` header (`ratings.csv`).
/// Fields after the rating are ignored.
pub fn parse_ratings(bytes: &[u8]) -> anyhow::Result<Vec<Rating>> {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let Some(first) = lines.clone().find(|l| !l.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let separator = if first.contains('\t') {
        "\t"
    } else if first.contains("::") {
        "::"
    } else if first.contains(',') {
        ","
    } else {
        bail!("cannot tell the layout: the first line has neither tabs, '::' nor commas");
    };
    let mut ratings = Vec::new();
    for (at, line) in lines.enumerate() {
        let number = at + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(separator).map(str::trim).collect();
        let is_header = ratings.is_empty()
            && separator == ","
            && fields.first().is_some_and(|f| f.parse::<i64>().is_err())
            && fields
                .first()
                .is_some_and(|f| f.chars().any(char::is_alphabetic));
        if is_header {
            continue;
        }
        let parsed = parse_rating(&fields).with_context(|| format!("line {number}: {line:?}"))?;
        ratings.push(parsed);
    }
    Ok(ratings)
}

fn parse_rating(fields: &[&str]) -> anyhow::Result<Rating> {
    let [user, item, rating, ..] = fields else {
        bail!(
            "expected user, item and rating, found {} field(s)",
            fields.len()
        );
    };
    let user = user
        .parse::<i64>()
        .with_context(|| format!("user id {user:?} is not an integer"))?;
    let item = item
        .parse::<i64>()
        .with_context(|| format!("item id {item:?} is not an integer"))?;
    let value = rating
        .parse::<f32>()
        .ok()
        .filter(|r| r.is_finite())
        .with_context(|| format!("rating {rating:?} is not a finite number"))?;
    Ok(Rating {
        user,
        item,
        rating: value,
    })
}

/// Reads item titles from MovieLens `u.item` or `movies.csv` (see `parse_titles`).
pub fn read_titles(path: &Path) -> anyhow::Result<HashMap<i64, String>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read items file {}", path.display()))?;
    parse_titles(&bytes).with_context(|| format!("items file {}", path.display()))
}

/// Parses `id|title|...` lines (100k `u.item`) or CSV `movieId,title,...` with quoted
/// titles and an optional header (`movies.csv`). `u.item` is Latin-1, so text that is not
/// UTF-8 is read as Latin-1, which maps every byte to a character.
pub fn parse_titles(bytes: &[u8]) -> anyhow::Result<HashMap<i64, String>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut titles = HashMap::new();
    let mut add = |number: u64, id: &str, title: &str| -> anyhow::Result<()> {
        let id = id
            .trim()
            .parse::<i64>()
            .with_context(|| format!("line {number}: item id {id:?} is not an integer"))?;
        if titles.insert(id, title.trim().to_owned()).is_some() {
            bail!("line {number}: item {id} appears more than once");
        }
        Ok(())
    };
    if first.contains('|') {
        for (at, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split('|');
            let (Some(id), Some(title)) = (fields.next(), fields.next()) else {
                bail!("line {}: expected id|title|..., found {line:?}", at + 1);
            };
            add(at as u64 + 1, id, title)?;
        }
    } else {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        for (at, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("record {}", at + 1))?;
            let number = record.position().map_or(at as u64 + 1, |p| p.line());
            let (Some(id), Some(title)) = (record.get(0), record.get(1)) else {
                bail!("line {number}: expected id,title,...");
            };
            let is_header = at == 0 && id.trim().parse::<i64>().is_err();
            if !is_header {
                add(number, id, title)?;
            }
        }
    }
    Ok(titles)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::OnceLock;

    use super::*;
    use crate::model::recommender::{Recommendation, Request, MAX_N};
    use crate::model::{LoadedModel, Model, Recommender};
    use crate::train::ratings::{generate, GenParams, Synthetic};

    /// A planted set small enough for a debug build, and a model fitted to it.
    struct Fixture {
        synthetic: Synthetic,
        trained: Trained,
    }

    const NOISE: f32 = 0.5;

    fn gen_params() -> GenParams {
        GenParams {
            users: 300,
            items: 300,
            ratings: 36_000,
            rank: 3,
            noise: NOISE,
            seed: 11,
            ..GenParams::default()
        }
    }

    fn fit_params() -> MfParams {
        MfParams {
            factors: 3,
            epochs: 60,
            lr: 0.01,
            reg: 0.02,
            init_std: 0.1,
            seed: 5,
        }
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let synthetic = generate(&gen_params()).unwrap();
            let trained = train(
                &synthetic.ratings,
                &HashMap::new(),
                &fit_params(),
                0.2,
                false,
            )
            .unwrap();
            Fixture { synthetic, trained }
        })
    }

    fn spec(trained: &Trained) -> &RecommenderSpec {
        match &trained.file.body {
            ModelBody::MatrixFactorization(spec) => spec,
            other => panic!("not a recommender: {:?}", other.kind()),
        }
    }

    fn all_users(n: usize) -> Vec<Request> {
        let users = gen_params().users as i64;
        (1..=users).map(|uid| Request { uid, n }).collect()
    }

    #[test]
    fn test_error_is_near_the_planted_noise_and_beats_the_baseline() {
        let f = fixture();
        let (model, baseline) = (f.trained.model, f.trained.baseline);
        eprintln!("noise {NOISE}: model {model:?}, baseline {baseline:?}");
        assert_eq!(model.n, 7200);
        assert!(model.rmse <= 1.1 * f64::from(NOISE), "{model:?}");
        assert!(
            model.rmse < 0.7 * baseline.rmse,
            "{model:?} vs {baseline:?}"
        );
        assert!(model.mae < baseline.mae);
        let metrics = &f.trained.file.meta.metrics;
        assert!((metrics["test_rmse"] - model.rmse).abs() < 1e-6);
        assert!((metrics["baseline_rmse"] - baseline.rmse).abs() < 1e-6);
        assert_eq!(f.trained.file.meta.features, vec!["uid".to_string()]);
    }

    #[test]
    fn recommends_the_planted_favourites() {
        let f = fixture();
        let model = Recommender::compile(spec(&f.trained)).unwrap();
        let mut rated: HashMap<i64, HashSet<i64>> = HashMap::new();
        for r in &f.synthetic.ratings {
            rated.entry(r.user).or_default().insert(r.item);
        }
        let out = model.recommend_batch(&all_users(10));
        let mut hits = 0;
        for (request, rec) in all_users(10).iter().zip(&out) {
            let seen = &rated[&request.uid];
            let truth: HashSet<i64> = f
                .synthetic
                .planted_top(request.uid, 10, |item| seen.contains(&item))
                .into_iter()
                .collect();
            hits += rec.items.iter().filter(|s| truth.contains(&s.item)).count();
        }
        let precision = hits as f64 / (10 * out.len()) as f64;
        let random = 10.0 / gen_params().items as f64;
        eprintln!("precision@10 {precision:.3} (random {random:.3})");
        assert!(precision >= 0.6, "precision@10 {precision}");
    }

    #[test]
    fn never_recommends_what_a_user_rated() {
        let f = fixture();
        let model = Recommender::compile(spec(&f.trained)).unwrap();
        let mut rated: HashMap<i64, HashSet<i64>> = HashMap::new();
        for r in &f.synthetic.ratings {
            rated.entry(r.user).or_default().insert(r.item);
        }
        let out = model.recommend_batch(&all_users(MAX_N));
        for (request, rec) in all_users(MAX_N).iter().zip(&out) {
            assert!(!rec.cold_start);
            let seen = &rated[&request.uid];
            let unrated = gen_params().items - seen.len();
            assert_eq!(rec.items.len(), MAX_N.min(unrated));
            for item in &rec.items {
                assert!(
                    !seen.contains(&item.item),
                    "user {} rated {}",
                    request.uid,
                    item.item
                );
            }
            assert!(rec.items.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn unknown_users_get_the_most_rated_items() {
        let f = fixture();
        let spec = spec(&f.trained);
        let model = Recommender::compile(spec).unwrap();
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for r in &f.synthetic.ratings {
            *counts.entry(r.item).or_default() += 1;
        }
        let out = model.recommend_batch(&[Request { uid: -7, n: 20 }]);
        assert!(out[0].cold_start);
        assert_eq!(out[0].items.len(), 20);
        let returned: Vec<usize> = out[0].items.iter().map(|s| counts[&s.item]).collect();
        let mut all: Vec<usize> = counts.values().copied().collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(returned, all[..20].to_vec());
        let i = spec
            .item_ids
            .iter()
            .position(|&id| id == out[0].items[0].item)
            .unwrap();
        assert_eq!(out[0].items[0].score, spec.global_mean + spec.item_bias[i]);
    }

    #[test]
    fn a_saved_model_loads_and_recommends_the_same() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models").join("recommender.json");
        f.trained.file.write(&path).unwrap();
        let loaded = LoadedModel::load(&path).unwrap();
        let Model::Recommender(loaded_model) = &loaded.model else {
            panic!("loaded a {:?}", loaded.kind());
        };
        let original = Recommender::compile(spec(&f.trained)).unwrap();
        let mut requests = all_users(15);
        requests.push(Request { uid: 0, n: 15 });
        let want: Vec<Recommendation<'_>> = original.recommend_batch(&requests);
        assert_eq!(loaded_model.recommend_batch(&requests), want);
        assert_eq!(loaded.version, f.trained.file.version);
        assert_eq!(loaded.describe()["users"], gen_params().users);
        assert_eq!(loaded.describe()["metrics"]["test_ratings"], 7200.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_model() {
        let synthetic = generate(&GenParams {
            users: 40,
            items: 50,
            ratings: 800,
            ..gen_params()
        })
        .unwrap();
        let params = MfParams {
            epochs: 5,
            ..fit_params()
        };
        let titles = HashMap::from([(1, "One".to_string())]);
        let a = train(&synthetic.ratings, &titles, &params, 0.2, false).unwrap();
        let b = train(&synthetic.ratings, &titles, &params, 0.2, false).unwrap();
        assert_eq!(a.file.body, b.file.body);
        assert_eq!(a.file.meta, b.file.meta);
        assert_eq!(a.file.version, b.file.version);
        assert_eq!(spec(&a).item_titles[0].as_deref(), Some("One"));
        let c = train(
            &synthetic.ratings,
            &titles,
            &MfParams { seed: 6, ..params },
            0.2,
            false,
        )
        .unwrap();
        assert_ne!(a.file.body, c.file.body);
    }

    #[test]
    fn refuses_bad_hyperparameters() {
        let ratings = [Rating {
            user: 1,
            item: 1,
            rating: 4.0,
        }];
        let none = HashMap::new();
        let ok = MfParams::default();
        assert!(train(
            &ratings,
            &none,
            &MfParams { lr: f32::NAN, ..ok },
            0.2,
            false
        )
        .is_err());
        assert!(train(&ratings, &none, &MfParams { factors: 0, ..ok }, 0.2, false).is_err());
        assert!(train(&ratings, &none, &MfParams { epochs: 0, ..ok }, 0.2, false).is_err());
        let synthetic = generate(&GenParams {
            users: 20,
            items: 20,
            ratings: 200,
            ..gen_params()
        })
        .unwrap();
        let wild = MfParams {
            lr: 50.0,
            epochs: 50,
            ..fit_params()
        };
        let diverged = train(&synthetic.ratings, &none, &wild, 0.2, false).unwrap_err();
        assert!(format!("{diverged}").contains("diverged"), "{diverged}");
        let huge = MfParams {
            factors: usize::MAX / 2,
            ..ok
        };
        assert!(train(&ratings, &none, &huge, 0.0, false).is_err());
        assert!(train(&ratings, &none, &ok, 1.0, false).is_err());
        assert!(train(&[], &none, &ok, 0.2, false).is_err());
        assert!(train(&ratings, &none, &ok, 0.0, false).is_ok());
    }

    #[test]
    fn parses_every_ratings_layout() {
        let want = vec![
            Rating {
                user: 196,
                item: 242,
                rating: 3.0,
            },
            Rating {
                user: 186,
                item: 302,
                rating: 3.5,
            },
        ];
        let u_data = b"196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n";
        assert_eq!(parse_ratings(u_data).unwrap(), want);
        let csv =
            b"userId,movieId,rating,timestamp\r\n196,242,3.0,881250949\r\n186,302,3.5,1\r\n\r\n";
        assert_eq!(parse_ratings(csv).unwrap(), want);
        let dat = b"196::242::3::881250949\n186::302::3.5::891717742\n";
        assert_eq!(parse_ratings(dat).unwrap(), want);
        assert!(parse_ratings(b"").unwrap().is_empty());
    }

    #[test]
    fn a_malformed_line_is_named_with_its_file_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.data");
        std::fs::write(&path, "1\t2\t3\t4\n1\t3\t4\t5\n2\tx\t4\t5\n").unwrap();
        let message = format!("{:#}", read_ratings(&path).unwrap_err());
        assert!(message.contains("u.data"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("\"x\""), "{message}");

        let short = parse_ratings(b"1,2,3\n4,5\n").unwrap_err();
        assert!(format!("{short:#}").contains("line 2"), "{short:#}");
        let nan = parse_ratings(b"1\t2\tNaN\t0\n").unwrap_err();
        assert!(format!("{nan:#}").contains("finite"), "{nan:#}");
        let later_header = parse_ratings(b"1,2,3,4\nuserId,movieId,rating,timestamp\n");
        assert!(later_header.is_err());
        assert!(read_ratings(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn parses_titles_in_both_layouts() {
        let mut u_item = b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n".to_vec();
        u_item.extend_from_slice(b"2|Caf\xe9 (1994)|01-Jan-1994||http://y|0|1\n");
        let titles = parse_titles(&u_item).unwrap();
        assert_eq!(titles[&1], "Toy Story (1995)");
        assert_eq!(titles[&2], "Café (1994)");

        let movies = "movieId,title,genres\n1,Toy Story (1995),Animation\n\
                      11,\"American President, The (1995)\",Comedy|Drama|Romance\n";
        let titles = parse_titles(movies.as_bytes()).unwrap();
        assert_eq!(titles[&11], "American President, The (1995)");
        assert_eq!(titles.len(), 2);

        let duplicate = parse_titles(b"1|A|\n1|B|\n").unwrap_err();
        assert!(format!("{duplicate:#}").contains("line 2"), "{duplicate:#}");
        let bad = parse_titles(b"movieId,title\nx,A\n").unwrap_err();
        assert!(format!("{bad:#}").contains("line 2"), "{bad:#}");
    }
}
