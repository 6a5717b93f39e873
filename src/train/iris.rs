//! `streamscore train iris`: a random forest of CART trees.
//!
//! Each tree is grown on a bootstrap sample of the rows, drawing a random subset of the
//! features at every split. The rows a tree did not see give the out-of-bag accuracy and
//! confusion matrix, an honest held-out estimate on a data set as small as iris. The forest
//! is fitted through linfa's `Fit` trait on a linfa `Dataset`, like any linfa model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use linfa::prelude::*;
use ndarray::{Array1, Array2, ArrayView1};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::cart::{fit_tree, TreeParams};
use super::progress;
use crate::model::{Forest, ForestSpec, ModelBody, ModelFile, ModelMeta};
use crate::stats::drift::Reference;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainIrisArgs {
    /// CSV with a header: the numeric feature columns and a label column.
    #[arg(long, default_value = "training/iris.csv")]
    pub data: PathBuf,
    /// Where to write the model file.
    #[arg(long, default_value = "models/iris-forest.json")]
    pub out: PathBuf,
    /// Name of the label column.
    #[arg(long, default_value = "species")]
    pub label: String,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub trees: u32,
    /// Maximum tree depth; unlimited when absent.
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// Features drawn at each split; the square root of the feature count when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_features: Option<u32>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Labelled rows, features in column order.
pub struct LabelledData {
    pub features: Vec<String>,
    pub classes: Vec<String>,
    pub records: Array2<f64>,
    pub targets: Array1<usize>,
}

pub fn read_csv(path: &Path, label: &str) -> anyhow::Result<LabelledData> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let label_col = headers
        .iter()
        .position(|h| h == label)
        .with_context(|| format!("{} has no column named {label:?}", path.display()))?;
    let features: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_col)
        .map(|(_, h)| h.to_owned())
        .collect();
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.with_context(|| format!("{}:{line}: unreadable row", path.display()))?;
        for (col, field) in row.iter().enumerate() {
            if col == label_col {
                labels.push(field.to_owned());
                continue;
            }
            let v: f64 = field.trim().parse().with_context(|| {
                format!("{}:{line}: {:?} is not a number", path.display(), field)
            })?;
            if !v.is_finite() {
                bail!("{}:{line}: {field:?} is not finite", path.display());
            }
            values.push(v);
        }
    }
    if labels.is_empty() {
        bail!("{} has no rows", path.display());
    }
    let mut classes = labels.clone();
    classes.sort();
    classes.dedup();
    let targets = labels
        .iter()
        .map(|l| classes.binary_search(l).unwrap_or(0))
        .collect();
    let records = Array2::from_shape_vec((labels.len(), features.len()), values)
        .context("rows have differing numbers of columns")?;
    Ok(LabelledData {
        features,
        classes,
        records,
        targets,
    })
}

/// Hyperparameters of the forest; `fit` on a linfa dataset grows it.
#[derive(Debug, Clone)]
pub struct ForestParams {
    pub trees: usize,
    pub tree: TreeParams,
    pub seed: u64,
    pub show_progress: bool,
}

pub struct FittedForest {
    pub spec: ForestSpec,
    pub oob_accuracy: f64,
    /// `confusion[true][predicted]` over rows with at least one out-of-bag tree.
    pub confusion: Vec<Vec<usize>>,
    pub oob_rows: usize,
}

impl Fit<Array2<f64>, Array1<usize>, linfa::Error> for ForestParams {
    type Object = FittedForest;

    fn fit(
        &self,
        dataset: &DatasetBase<Array2<f64>, Array1<usize>>,
    ) -> Result<FittedForest, linfa::Error> {
        let records = dataset.records();
        let targets = dataset
            .targets()
            .as_slice()
            .map(<[usize]>::to_vec)
            .unwrap_or_else(|| dataset.targets().to_vec());
        let n_rows = records.nrows();
        let n_features = records.ncols();
        let n_classes = targets.iter().max().map_or(0, |m| m + 1);
        if n_rows == 0 || n_features == 0 || self.trees == 0 {
            return Err(linfa::Error::Parameters(
                "a forest needs rows, features and trees".into(),
            ));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        let bar = self
            .show_progress
            .then(|| progress::bar(self.trees as u64, "trees"));
        let mut trees = Vec::with_capacity(self.trees);
        let mut oob_votes = Array2::<f32>::zeros((n_rows, n_classes));
        let mut in_bag = vec![false; n_rows];
        for _ in 0..self.trees {
            let bag: Vec<usize> = (0..n_rows).map(|_| rng.gen_range(0..n_rows)).collect();
            let tree = fit_tree(
                records.view(),
                &targets,
                n_classes,
                &bag,
                &self.tree,
                &mut rng,
            );
            // Scoring the out-of-bag rows through the compiled form also proves that
            // training never writes a tree the service would refuse.
            let single = Forest::compile(
                &ForestSpec {
                    trees: vec![tree.clone()],
                },
                n_features,
                n_classes,
            )
            .map_err(|e| linfa::Error::Parameters(e.to_string()))?;
            in_bag.iter_mut().for_each(|b| *b = false);
            bag.iter().for_each(|&r| in_bag[r] = true);
            let probs = single.predict_proba(records.view());
            for r in (0..n_rows).filter(|r| !in_bag[*r]) {
                oob_votes.row_mut(r).scaled_add(1.0, &probs.row(r));
            }
            trees.push(tree);
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }

        let mut confusion = vec![vec![0usize; n_classes]; n_classes];
        let (mut oob_rows, mut correct) = (0usize, 0usize);
        for (r, votes) in oob_votes.rows().into_iter().enumerate() {
            if votes.sum() <= 0.0 {
                continue;
            }
            let predicted = argmax(votes);
            confusion[targets[r]][predicted] += 1;
            oob_rows += 1;
            correct += usize::from(targets[r] == predicted);
        }
        Ok(FittedForest {
            spec: ForestSpec { trees },
            oob_accuracy: if oob_rows == 0 {
                0.0
            } else {
                correct as f64 / oob_rows as f64
            },
            confusion,
            oob_rows,
        })
    }
}

pub struct TrainedForest {
    pub file: ModelFile,
    pub oob_accuracy: f64,
    pub confusion: Vec<Vec<usize>>,
}

pub fn train(
    data: &LabelledData,
    args: &TrainIrisArgs,
    show_progress: bool,
) -> anyhow::Result<TrainedForest> {
    let n_features = data.features.len();
    let features_per_split = args
        .max_features
        .map_or_else(
            || (n_features as f64).sqrt().round() as usize,
            |m| m as usize,
        )
        .clamp(1, n_features.max(1));
    let params = ForestParams {
        trees: args.trees as usize,
        tree: TreeParams {
            max_depth: args.max_depth,
            features_per_split,
            min_rows_to_split: 2,
        },
        seed: args.seed,
        show_progress,
    };
    let dataset = Dataset::new(data.records.clone(), data.targets.clone())
        .with_feature_names(data.features.clone());
    let fitted = params.fit(&dataset).context("fitting the forest")?;

    let mut metrics = BTreeMap::new();
    metrics.insert("oob_accuracy".to_owned(), fitted.oob_accuracy);
    metrics.insert("oob_rows".to_owned(), fitted.oob_rows as f64);
    metrics.insert("training_rows".to_owned(), data.records.nrows() as f64);
    let meta = ModelMeta {
        features: data.features.clone(),
        classes: data.classes.clone(),
        params: serde_json::json!({
            "trees": args.trees,
            "max_depth": args.max_depth,
            "max_features": features_per_split,
            "seed": args.seed,
        }),
        metrics,
    };
    Ok(TrainedForest {
        // The training inputs' distribution, which the service's drift figures compare with.
        file: ModelFile::new(meta, ModelBody::RandomForest(fitted.spec)).with_reference(
            Reference::from_rows(
                &data.features,
                &data.records.iter().copied().collect::<Vec<_>>(),
            ),
        ),
        oob_accuracy: fitted.oob_accuracy,
        confusion: fitted.confusion,
    })
}

fn argmax(row: ArrayView1<'_, f32>) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

pub fn run(args: &TrainIrisArgs) -> anyhow::Result<()> {
    let data = read_csv(&args.data, &args.label)?;
    let trained = train(&data, args, true)?;
    println!(
        "trained {} trees on {} rows, {} features, classes {:?}",
        args.trees,
        data.records.nrows(),
        data.features.len(),
        data.classes
    );
    println!("out-of-bag accuracy: {:.4}", trained.oob_accuracy);
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = data
        .classes
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(6);
    print!("{:width$}", "");
    for c in &data.classes {
        print!(" {c:>width$}");
    }
    println!();
    for (c, row) in data.classes.iter().zip(&trained.confusion) {
        print!("{c:width$}");
        for n in row {
            print!(" {n:>width$}");
        }
        println!();
    }
    trained.file.write(&args.out)?;
    println!(
        "wrote {} (version {})",
        args.out.display(),
        trained.file.version
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadedModel;
    use crate::model::Model;

    fn data() -> LabelledData {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("training/iris.csv");
        read_csv(&path, "species").unwrap()
    }

    fn args(trees: u32, seed: u64) -> TrainIrisArgs {
        TrainIrisArgs {
            data: PathBuf::new(),
            out: PathBuf::new(),
            label: "species".into(),
            trees,
            max_depth: None,
            max_features: None,
            seed,
        }
    }

    fn probabilities(file: &ModelFile, data: &LabelledData) -> Array2<f32> {
        match LoadedModel::from_file(file.clone()).unwrap().model {
            Model::Forest(f) => f.predict_proba(data.records.view()),
            Model::Recommender(_) | Model::Pmml(_) | Model::Ensemble(_) => unreachable!(),
        }
    }

    #[test]
    fn same_seed_same_forest_other_seed_other_forest() {
        let data = data();
        let a = train(&data, &args(20, 9), false).unwrap().file;
        let b = train(&data, &args(20, 9), false).unwrap().file;
        let c = train(&data, &args(20, 10), false).unwrap().file;
        assert_eq!(a.body, b.body);
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn saved_then_loaded_predicts_identically() {
        let data = data();
        let dir = tempfile::tempdir().unwrap();
        // Several seeds: a lossy float round trip shows up on only some thresholds.
        for seed in 0..8 {
            let trained = train(&data, &args(25, seed), false).unwrap();
            let path = dir.path().join(format!("m{seed}.json"));
            trained.file.write(&path).unwrap();
            let loaded = ModelFile::read(&path).unwrap();
            assert_eq!(loaded, trained.file);
            assert_eq!(
                probabilities(&loaded, &data),
                probabilities(&trained.file, &data)
            );
        }
    }

    #[test]
    fn learns_iris_well_out_of_bag() {
        let trained = train(&data(), &args(100, 42), false).unwrap();
        assert!(
            trained.oob_accuracy >= 0.9,
            "oob accuracy {}",
            trained.oob_accuracy
        );
        let counted: usize = trained.confusion.iter().flatten().sum();
        assert!(
            counted >= 140,
            "nearly every row is out of bag for some tree"
        );
    }

    #[test]
    fn bad_csv_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "a,b,species\n1,2,x\n3,oops,y\n").unwrap();
        let err = read_csv(&path, "species").err().unwrap().to_string();
        assert!(err.contains(":3:") && err.contains("oops"), "{err}");
        assert!(read_csv(&path, "label").is_err());
    }
}
