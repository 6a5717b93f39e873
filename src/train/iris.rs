//! `streamscore train iris`: a random forest of linfa-trees decision trees.
//!
//! Each tree is fitted on a bootstrap sample of the rows and a random subset of the feature
//! columns (linfa's `bootstrap_with_indices`, the sampling linfa-ensemble's `RandomForest`
//! uses). We drive the loop ourselves rather than through `EnsembleLearner` because we need
//! each tree's row indices: they give the out-of-bag accuracy estimate and the leaf class
//! frequencies that become the served class probabilities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use linfa::prelude::*;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::{Array1, Array2, ArrayView1};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::progress;
use crate::model::forest::{NodeSpec, TreeSpec};
use crate::model::{Forest, ForestSpec, ModelBody, ModelFile, ModelMeta};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainIrisArgs {
    /// CSV with a header: the numeric feature columns, then the label column.
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
    /// Share of the feature columns each tree sees (at least one column).
    #[arg(long, default_value_t = 0.75)]
    pub feature_fraction: f64,
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

pub struct TrainedForest {
    pub file: ModelFile,
    pub oob_accuracy: f64,
    /// `confusion[true][predicted]` over rows with at least one out-of-bag tree.
    pub confusion: Vec<Vec<usize>>,
}

pub fn train(data: &LabelledData, args: &TrainIrisArgs, show_progress: bool) -> anyhow::Result<TrainedForest> {
    if !(args.feature_fraction > 0.0 && args.feature_fraction <= 1.0) {
        bail!("--feature-fraction must be in (0, 1], got {}", args.feature_fraction);
    }
    let n_rows = data.records.nrows();
    let n_features = data.features.len();
    let n_classes = data.classes.len();
    let per_tree_features = ((n_features as f64) * args.feature_fraction).ceil().max(1.0) as usize;
    let dataset = Dataset::new(data.records.clone(), data.targets.clone());
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let params = DecisionTree::<f64, usize>::params().max_depth(args.max_depth);

    let bar = show_progress.then(|| progress::bar(u64::from(args.trees), "trees"));
    let mut trees = Vec::with_capacity(args.trees as usize);
    let mut oob_votes = Array2::<f32>::zeros((n_rows, n_classes));
    for (sample, rows, columns) in dataset
        .bootstrap_with_indices((n_rows, per_tree_features), &mut rng)
        .take(args.trees as usize)
    {
        let fitted = params.fit(&sample).context("fitting a decision tree")?;
        let tree = flatten(fitted.root_node(), &columns, n_classes);
        let tree = with_leaf_distributions(tree, &data.records, &data.targets, &rows, n_features, n_classes)?;
        let single = Forest::compile(&ForestSpec { trees: vec![tree.clone()] }, n_features, n_classes)?;
        let mut in_bag = vec![false; n_rows];
        rows.iter().for_each(|&r| in_bag[r] = true);
        let probs = single.predict_proba(data.records.view());
        for (r, _) in in_bag.iter().enumerate().filter(|(_, bagged)| !**bagged) {
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
    let mut scored = 0usize;
    let mut correct = 0usize;
    for (r, votes) in oob_votes.rows().into_iter().enumerate() {
        if votes.sum() <= 0.0 {
            continue;
        }
        let predicted = argmax(votes);
        let truth = data.targets[r];
        confusion[truth][predicted] += 1;
        scored += 1;
        correct += usize::from(truth == predicted);
    }
    let oob_accuracy = if scored == 0 { 0.0 } else { correct as f64 / scored as f64 };

    let mut metrics = BTreeMap::new();
    metrics.insert("oob_accuracy".to_owned(), oob_accuracy);
    metrics.insert("oob_rows".to_owned(), scored as f64);
    metrics.insert("training_rows".to_owned(), n_rows as f64);
    let meta = ModelMeta {
        features: data.features.clone(),
        classes: data.classes.clone(),
        params: serde_json::json!({
            "trees": args.trees,
            "max_depth": args.max_depth,
            "feature_fraction": args.feature_fraction,
            "seed": args.seed,
        }),
        metrics,
    };
    let file = ModelFile::new(meta, ModelBody::RandomForest(ForestSpec { trees }));
    Ok(TrainedForest {
        file,
        oob_accuracy,
        confusion,
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

/// Turns linfa's boxed tree into our node list (parents before children), mapping the
/// tree's column indices back to the full feature set. Leaves get placeholder
/// distributions that `with_leaf_distributions` fills in.
fn flatten(root: &TreeNode<f64, usize>, columns: &[usize], n_classes: usize) -> TreeSpec {
    let mut nodes = Vec::new();
    let mut stack = vec![(root, None::<(usize, bool)>)];
    while let Some((node, parent)) = stack.pop() {
        let index = nodes.len();
        if let Some((p, is_left)) = parent {
            if let NodeSpec::Split { left, right, .. } = &mut nodes[p] {
                *(if is_left { left } else { right }) = index;
            }
        }
        let children: Vec<&TreeNode<f64, usize>> = node
            .children()
            .into_iter()
            .filter_map(|c| c.as_deref())
            .collect();
        if node.is_leaf() || children.len() < 2 {
            // A split with a missing side never routes rows there; linfa only leaves one
            // when a side got no samples, so the present child stands for the node.
            if let (false, Some(only)) = (node.is_leaf(), children.first()) {
                stack.push((only, parent));
                continue;
            }
            let mut distribution = vec![0.0; n_classes];
            if let Some(slot) = node.prediction().and_then(|c| distribution.get_mut(c)) {
                *slot = 1.0;
            }
            nodes.push(NodeSpec::Leaf { distribution });
            continue;
        }
        let (column, threshold, _) = node.split();
        nodes.push(NodeSpec::Split {
            feature: columns[column],
            threshold,
            left: 0,
            right: 0,
        });
        // Right pushed first so the left child is numbered next: depth-first, left-first.
        stack.push((children[1], Some((index, false))));
        stack.push((children[0], Some((index, true))));
    }
    TreeSpec { nodes }
}

/// Replaces each leaf's one-hot vote with the class frequencies of the tree's bootstrap
/// rows that reach it, so probabilities are graded rather than 0/1 per tree.
fn with_leaf_distributions(
    mut tree: TreeSpec,
    records: &Array2<f64>,
    targets: &Array1<usize>,
    bag: &[usize],
    n_features: usize,
    n_classes: usize,
) -> anyhow::Result<TreeSpec> {
    let mut counts: Vec<Vec<f32>> = vec![vec![0.0; n_classes]; tree.nodes.len()];
    for &r in bag {
        let row = records.row(r);
        let mut i = 0;
        while let NodeSpec::Split {
            feature,
            threshold,
            left,
            right,
        } = &tree.nodes[i]
        {
            i = if row[*feature] < *threshold { *left } else { *right };
        }
        counts[i][targets[r]] += 1.0;
    }
    for (node, count) in tree.nodes.iter_mut().zip(counts) {
        if let NodeSpec::Leaf { distribution } = node {
            let total: f32 = count.iter().sum();
            if total > 0.0 {
                *distribution = count.into_iter().map(|c| c / total).collect();
            }
        }
    }
    // Re-validate through the scoring compiler: training must never write a file the
    // service would refuse.
    Forest::compile(&ForestSpec { trees: vec![tree.clone()] }, n_features, n_classes)?;
    Ok(tree)
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
    let width = data.classes.iter().map(String::len).max().unwrap_or(0).max(6);
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
    println!("wrote {} (version {})", args.out.display(), trained.file.version);
    Ok(())
}
