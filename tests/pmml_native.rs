//! The shipped native forest written as PMML and imported again scores as the native
//! kernel does: same label wherever the native probabilities have no near-tie, the same
//! probabilities to f32 precision (the native forest adds in f32, PMML in double).

use std::path::Path;

use streamscore::model::pmml::export::forest_to_pmml;
use streamscore::model::pmml::{fields::Raw, PmmlModel, Prediction};
use streamscore::model::{ModelBody, ModelFile};

#[test]
fn the_native_forest_round_trips_through_pmml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = ModelFile::read(&root.join("models/iris-forest.json")).unwrap();
    let ModelBody::RandomForest(spec) = &file.body else {
        panic!("not a forest")
    };
    let text = forest_to_pmml(spec, &file.meta.features, &file.meta.classes);
    let pmml = PmmlModel::parse(&text).unwrap();
    assert_eq!(pmml.n_trees(), 100);
    let native = streamscore::model::LoadedModel::from_file(file.clone()).unwrap();
    let streamscore::model::Model::Forest(forest) = &native.model else {
        unreachable!()
    };
    let data =
        streamscore::train::iris::read_csv(&root.join("training/iris.csv"), "species").unwrap();
    let mut inputs = Vec::new();
    for row in data.records.rows() {
        for (i, v) in row.iter().enumerate() {
            inputs.push(pmml.prepare(i, Raw::Number(*v)).unwrap());
        }
    }
    let want = forest.predict_proba(data.records.view());
    let got = pmml.predict_rows(&inputs);
    for (r, p) in got.iter().enumerate() {
        let Prediction::Class {
            label,
            probabilities,
        } = p
        else {
            panic!("row {r}: {p:?}")
        };
        for (g, w) in probabilities.iter().zip(want.row(r)) {
            assert!((g - f64::from(*w)).abs() < 1e-5, "row {r}: {g} vs {w}");
        }
        let native_label =
            streamscore::model::forest::argmax_rows(&want.select(ndarray::Axis(0), &[r]))[0];
        assert_eq!(*label, native_label, "row {r}");
    }
}
