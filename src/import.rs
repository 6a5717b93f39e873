//! `streamscore import`: a foreign model (PMML) into streamscore's own model file, with the
//! content-hash version and metadata every model file has, so that it deploys and reloads
//! like a model trained here.

use std::path::PathBuf;

use anyhow::Context;

use crate::model::{pmml_file_renamed, LoadedModel};

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The PMML document (from sklearn2pmml, JPMML-SparkML, ...).
    pub file: PathBuf,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Field names records use, in the model's input order (renames the PMML's).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Names for a classifier's categories, in the model's order (what Spark's
    /// `IndexToString` did for an index-valued label).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
}

pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let file = pmml_file_renamed(&bytes, args.features.clone(), args.classes.clone())
        .with_context(|| format!("importing {}", args.file.display()))?;
    // Loaded once as the service would, so that a file written here is one that serves.
    let model = LoadedModel::from_file(file.clone())?;
    file.write(&args.out)?;
    println!(
        "{} → {}: version {}, inputs {:?}, {}",
        args.file.display(),
        args.out.display(),
        model.version,
        model.meta.features,
        if model.meta.classes.is_empty() {
            "regression".to_owned()
        } else {
            format!("classes {:?}", model.meta.classes)
        }
    );
    Ok(())
}
