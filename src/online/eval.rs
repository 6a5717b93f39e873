//! `streamscore eval prequential`: does learning from feedback beat the frozen model?
//!
//! A planted ratings set (`streamscore gen ratings`, same generator and timestamps) is split
//! in time: every tenth user is *new* (all their ratings are feedback), and every other user
//! keeps their last `holdout` ratings as feedback and the rest for training. The model is
//! trained on the training part only. The feedback is then replayed in time order and every
//! event is first scored, then learned from (prequential, test-then-learn):
//!
//! - RMSE of the predicted rating of the event's item, clipped to the training range;
//! - precision@10 of the user's list against the planted best 10 items the user has not
//!   rated yet. Both lists leave out what the user has rated so far, so the difference is
//!   what the factors learned, not the exclusion.
//!
//! The frozen model is the trained one, untouched; the online one is the same model with
//! `crate::online::OnlineState` folding each event in after it was scored.

use std::collections::{HashMap, HashSet};

use anyhow::bail;
use serde::Serialize;

use super::state::{FeedbackEvent, OnlineConfig, OnlineState};
use crate::model::recommender::{Request, UserOverride};
use crate::model::Recommender;
use crate::train::ratings::{generate, timestamps, GenParams, Synthetic};
use crate::train::recommender::{build_spec, fit, MfParams, Rating};

#[derive(clap::Args, Debug, Clone)]
pub struct PrequentialArgs {
    /// Users of the generated set (as `gen ratings`).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    #[arg(long, default_value_t = 1700)]
    pub items: usize,
    #[arg(long, default_value_t = 100_000)]
    pub ratings: usize,
    #[arg(long, default_value_t = 5)]
    pub rank: usize,
    #[arg(long, default_value_t = 0.5)]
    pub noise: f32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Each known user's last ratings (in time) replayed as feedback.
    #[arg(long, default_value_t = 5)]
    pub holdout: usize,
    /// Every n-th user is new: unknown to the model, all their ratings are feedback.
    #[arg(long, default_value_t = 10)]
    pub new_user_every: usize,
    /// Training hyperparameters (as `train recommender`).
    #[arg(long, default_value_t = 100)]
    pub factors: usize,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.005)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.02)]
    pub reg: f32,
    /// λ of the online fold-in (as `serve --online-reg`).
    #[arg(long, default_value_t = OnlineConfig::default().reg)]
    pub online_reg: f64,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The precision cut-off.
pub const TOP: usize = 10;
/// The curve of precision by number of ratings a new user has given goes this far.
const CURVE_LEN: usize = 21;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroupFigures {
    pub events: usize,
    pub rmse_frozen: f64,
    pub rmse_online: f64,
    pub precision_frozen: f64,
    pub precision_online: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Ratings the new user had given before the event.
    pub ratings_before: usize,
    pub events: usize,
    pub precision_frozen: f64,
    pub precision_online: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub train_ratings: usize,
    pub feedback_events: usize,
    pub known: GroupFigures,
    pub new: GroupFigures,
    /// New users: precision@10 by ratings given so far.
    pub new_user_curve: Vec<CurvePoint>,
    /// Fewest ratings after which a new user's online list, on average, finds at least half
    /// the planted favourites a trained user's list does (`known.precision_frozen`).
    pub personalised_after: Option<usize>,
}

#[derive(Default)]
struct Sums {
    events: usize,
    sq_frozen: f64,
    sq_online: f64,
    hits_frozen: usize,
    hits_online: usize,
}

impl Sums {
    fn figures(&self) -> GroupFigures {
        let n = self.events.max(1) as f64;
        GroupFigures {
            events: self.events,
            rmse_frozen: (self.sq_frozen / n).sqrt(),
            rmse_online: (self.sq_online / n).sqrt(),
            precision_frozen: self.hits_frozen as f64 / (n * TOP as f64),
            precision_online: self.hits_online as f64 / (n * TOP as f64),
        }
    }
}

/// Splits, trains, replays; see the module documentation.
pub fn prequential(
    synthetic: &Synthetic,
    times: &[i64],
    holdout: usize,
    new_user_every: usize,
    params: &MfParams,
    online: OnlineConfig,
) -> anyhow::Result<Report> {
    if times.len() != synthetic.ratings.len() {
        bail!("one timestamp per rating is needed");
    }
    if new_user_every == 0 {
        bail!("--new-user-every must be at least 1");
    }
    let is_new = |user: i64| user % new_user_every as i64 == 0;
    let mut by_user: HashMap<i64, Vec<(i64, Rating)>> = HashMap::new();
    for (r, &t) in synthetic.ratings.iter().zip(times) {
        by_user.entry(r.user).or_default().push((t, *r));
    }
    let (mut train, mut stream) = (Vec::new(), Vec::new());
    let mut users: Vec<i64> = by_user.keys().copied().collect();
    users.sort_unstable();
    for user in users {
        let mut mine = by_user.remove(&user).unwrap_or_default();
        mine.sort_by_key(|(t, r)| (*t, r.item));
        let cut = if is_new(user) {
            0
        } else {
            mine.len().saturating_sub(holdout)
        };
        for (at, (t, r)) in mine.into_iter().enumerate() {
            if at < cut {
                train.push(r);
            } else {
                stream.push((t, r));
            }
        }
    }
    if train.is_empty() {
        bail!("nothing left to train on");
    }
    stream.sort_by_key(|(t, r)| (*t, r.user, r.item));

    let fitted = fit(&train, params, false);
    let spec = build_spec(&fitted, &train, &HashMap::new());
    let model = Recommender::compile(&spec)?;
    let version = "prequential";
    let mut state = OnlineState::new(online, version);
    let (lo, hi) = fitted.rating_range;
    let clip = |v: f32| if lo <= hi { v.clamp(lo, hi) } else { v };

    let mut rated: HashMap<i64, HashSet<i64>> = HashMap::new();
    for r in &train {
        rated.entry(r.user).or_default().insert(r.item);
    }
    let mut seen_in_stream: HashMap<i64, Vec<i64>> = HashMap::new();
    let (mut known, mut new) = (Sums::default(), Sums::default());
    let mut curve: Vec<(usize, usize, usize)> = vec![(0, 0, 0); CURVE_LEN];

    for (offset, (_, r)) in stream.iter().enumerate() {
        let item = model.item_index(r.item);
        let frozen_user = model.user_index(r.user).map(|u| {
            let (bias, p) = model.user_params(u);
            (bias, p.to_vec())
        });
        let learned = state.learned(r.user).cloned();
        let online_user = learned
            .as_ref()
            .and_then(|l| l.solved.as_ref())
            .map(|s| (s.bias, s.factors.clone()))
            .or_else(|| frozen_user.clone());
        let predict = |user: &Option<(f32, Vec<f32>)>| -> f32 {
            let bias = user.as_ref().map_or(0.0, |(b, _)| *b);
            match item {
                None => model.global_mean() + bias,
                Some(i) => {
                    let dot = user.as_ref().map_or(0.0, |(_, p)| {
                        p.iter()
                            .zip(model.item_factors(i))
                            .map(|(a, b)| a * b)
                            .sum()
                    });
                    model.item_base(i) + bias + dot
                }
            }
        };
        let err_frozen = f64::from(r.rating - clip(predict(&frozen_user)));
        let err_online = f64::from(r.rating - clip(predict(&online_user)));

        let seen = seen_in_stream.entry(r.user).or_default();
        let trained = rated.entry(r.user).or_default();
        let truth: HashSet<i64> = synthetic
            .planted_top(r.user, TOP, |i| trained.contains(&i) || seen.contains(&i))
            .into_iter()
            .collect();
        let request = [Request {
            uid: r.user,
            n: TOP,
        }];
        let frozen_list = model.recommend_batch_with(
            &request,
            &[Some(UserOverride {
                learned: None,
                seen,
            })],
        );
        let online_list = model.recommend_batch_with(
            &request,
            &[Some(UserOverride {
                learned: online_user.as_ref().map(|(b, p)| (*b, &p[..])),
                seen,
            })],
        );
        let hits = |list: &[crate::model::recommender::Recommendation<'_>]| {
            list[0]
                .items
                .iter()
                .filter(|s| truth.contains(&s.item))
                .count()
        };
        let (hits_frozen, hits_online) = (hits(&frozen_list), hits(&online_list));

        let sums = if is_new(r.user) { &mut new } else { &mut known };
        sums.events += 1;
        sums.sq_frozen += err_frozen * err_frozen;
        sums.sq_online += err_online * err_online;
        sums.hits_frozen += hits_frozen;
        sums.hits_online += hits_online;
        if is_new(r.user) && seen.len() < CURVE_LEN {
            let point = &mut curve[seen.len()];
            point.0 += 1;
            point.1 += hits_frozen;
            point.2 += hits_online;
        }

        // Then learn.
        seen.push(r.item);
        let event = FeedbackEvent {
            uid: r.user,
            item: r.item,
            rating: Some(r.rating),
        };
        state.apply(&model, 0, offset as i64, event);
    }

    let new_user_curve: Vec<CurvePoint> = curve
        .iter()
        .enumerate()
        .map(|(n, &(events, frozen, online))| {
            let denominator = (events.max(1) * TOP) as f64;
            CurvePoint {
                ratings_before: n,
                events,
                precision_frozen: frozen as f64 / denominator,
                precision_online: online as f64 / denominator,
            }
        })
        .collect();
    let known = known.figures();
    let personalised_after = new_user_curve
        .iter()
        .find(|p| p.events > 0 && p.precision_online >= 0.5 * known.precision_frozen)
        .map(|p| p.ratings_before);
    Ok(Report {
        train_ratings: train.len(),
        feedback_events: stream.len(),
        known,
        new: new.figures(),
        new_user_curve,
        personalised_after,
    })
}

pub fn run(args: &PrequentialArgs) -> anyhow::Result<()> {
    let gen = GenParams {
        users: args.users,
        items: args.items,
        ratings: args.ratings,
        rank: args.rank,
        noise: args.noise,
        seed: args.seed,
        ..GenParams::default()
    };
    let synthetic = generate(&gen)?;
    let times = timestamps(&synthetic);
    let params = MfParams {
        factors: args.factors,
        epochs: args.epochs,
        lr: args.lr,
        reg: args.reg,
        seed: args.seed,
        ..MfParams::default()
    };
    let online = OnlineConfig {
        reg: args.online_reg,
        max_users: usize::MAX,
        ..OnlineConfig::default()
    };
    let report = prequential(
        &synthetic,
        &times,
        args.holdout,
        args.new_user_every,
        &params,
        online,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "trained on {} ratings; {} feedback events replayed in time order (score, then learn)",
        report.train_ratings, report.feedback_events
    );
    println!(
        "{:<12} {:>7} {:>12} {:>12} {:>10} {:>10}",
        "users", "events", "RMSE frozen", "RMSE online", "P@10 froz.", "P@10 onl."
    );
    for (name, g) in [("known", report.known), ("new", report.new)] {
        println!(
            "{name:<12} {:>7} {:>12.4} {:>12.4} {:>10.3} {:>10.3}",
            g.events, g.rmse_frozen, g.rmse_online, g.precision_frozen, g.precision_online
        );
    }
    println!("new users, precision@10 by ratings given so far (frozen = popular list):");
    for p in report.new_user_curve.iter().filter(|p| p.events > 0) {
        println!(
            "  {:>2} ratings: {:>5} events, frozen {:.3}, online {:.3}",
            p.ratings_before, p.events, p.precision_frozen, p.precision_online
        );
    }
    match report.personalised_after {
        Some(k) => println!(
            "a new user's list finds half the planted favourites a trained user's does after {k} ratings"
        ),
        None => println!("new users' lists never reached half a trained user's precision"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small enough for a debug build: 200 users (20 new), 150 items, rank 3.
    fn small() -> (Synthetic, Vec<i64>) {
        let synthetic = generate(&GenParams {
            users: 200,
            items: 150,
            ratings: 12_000,
            rank: 3,
            noise: 0.5,
            seed: 21,
            ..GenParams::default()
        })
        .unwrap();
        let times = timestamps(&synthetic);
        (synthetic, times)
    }

    fn params() -> MfParams {
        MfParams {
            factors: 3,
            epochs: 40,
            lr: 0.01,
            reg: 0.02,
            init_std: 0.1,
            seed: 5,
        }
    }

    #[test]
    fn online_beats_frozen_on_new_users_and_does_not_hurt_known_ones() {
        let (synthetic, times) = small();
        let report = prequential(
            &synthetic,
            &times,
            5,
            10,
            &params(),
            OnlineConfig::default(),
        )
        .unwrap();
        eprintln!("{report:#?}");
        let (known, new) = (report.known, report.new);
        assert_eq!(known.events, 180 * 5);
        assert!(new.events >= 20 * 20, "{new:?}");
        assert_eq!(report.feedback_events, known.events + new.events);
        // New users: the frozen model only has the popular list and μ + b_i.
        assert!(new.rmse_online < 0.85 * new.rmse_frozen, "{new:?}");
        assert!(new.precision_online > new.precision_frozen + 0.1, "{new:?}");
        // Known users: no worse (a little slack for the precision of 900 events).
        assert!(known.rmse_online <= known.rmse_frozen * 1.005, "{known:?}");
        assert!(
            known.precision_online >= known.precision_frozen - 0.01,
            "{known:?}"
        );
        // A new user is personalised after a handful of ratings (measured: see README).
        let k = report
            .personalised_after
            .expect("new users get personalised");
        assert!(k <= 6, "personalised only after {k} ratings");
        let after = &report.new_user_curve[k];
        assert!(
            after.precision_online > after.precision_frozen + 0.05,
            "{after:?}"
        );
    }
}
