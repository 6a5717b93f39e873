//! `streamscore import`: a foreign model (PMML, XGBoost JSON, LightGBM text, ONNX) into
//! streamscore's own model file, with the content-hash version and metadata every model
//! file has, so that it deploys and reloads like a model trained here.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::model::ensemble::Format;
use crate::model::{detect_import, import_file, pmml, pmml_file_renamed, LoadedModel};
use crate::stats::drift::Reference;

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The model: PMML (sklearn2pmml, JPMML-SparkML, ...), XGBoost JSON
    /// (`save_model("m.json")`), LightGBM text (`save_model("m.txt")`) or ONNX (`.onnx`,
    /// skl2onnx tree ensembles).
    pub file: PathBuf,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Field names records use, in the model's input order (renames the file's; required
    /// for ONNX, whose graph has no feature names).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Names for a classifier's categories, in the model's order (what Spark's
    /// `IndexToString` did for an index-valued label, or names for XGBoost's and LightGBM's
    /// class indices).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// CSV with a header naming the model's inputs (as records name them): its rows become
    /// the drift reference, as training data does for `train forest`.
    #[arg(long)]
    pub reference_data: Option<PathBuf>,
}

pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let by_extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pmml") || e.eq_ignore_ascii_case("xml"));
    let mut file = if by_extension || pmml::looks_like_pmml(&bytes) {
        pmml_file_renamed(&bytes, args.features.clone(), args.classes.clone())
    } else {
        let Some(format) = detect_import(&args.file, &bytes) else {
            bail!(
                "{}: not a PMML, XGBoost JSON, LightGBM text or ONNX model",
                args.file.display()
            );
        };
        if format == Format::Onnx && args.features.is_empty() {
            bail!(
                "an ONNX graph has no feature names: name its input columns in order with --features a,b,..."
            );
        }
        import_file(&bytes, format, args.features.clone(), args.classes.clone())
    }
    .with_context(|| format!("importing {}", args.file.display()))?;
    if let Some(csv) = &args.reference_data {
        let rows = read_columns(csv, &file.meta.features)?;
        let reference = Reference::from_rows(&file.meta.features, &rows);
        file = file.with_reference(reference);
    }
    // Loaded once as the service would, so that a file written here is one that serves.
    let model = LoadedModel::from_file(file.clone())?;
    file.write(&args.out)?;
    println!(
        "{} → {}: {} model, version {}, inputs {:?}, {}",
        args.file.display(),
        args.out.display(),
        model.kind(),
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

/// The named columns of a CSV file, row-major; an empty cell is a missing value (NaN).
fn read_columns(path: &std::path::Path, names: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let columns: Vec<usize> = names
        .iter()
        .map(|name| {
            headers.iter().position(|h| h == name).with_context(|| {
                format!(
                    "{} has no column {name:?} (the model's input)",
                    path.display()
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        for (&column, name) in columns.iter().zip(names) {
            let cell = record.get(column).unwrap_or("").trim();
            let value = if cell.is_empty() {
                f64::NAN
            } else {
                cell.parse::<f64>().with_context(|| {
                    format!(
                        "{} row {}: {name} = {cell:?} is not a number",
                        path.display(),
                        line + 2
                    )
                })?
            };
            rows.push(value);
        }
    }
    if rows.is_empty() {
        anyhow::bail!("{} has no rows", path.display());
    }
    Ok(rows)
}
