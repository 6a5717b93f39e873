//! Any bytes as a PMML document: parsing returns an error or a model, never panics or
//! overflows the stack, and a model that loads scores rows (complete, missing, odd strings)
//! through both the exact evaluator and the batch kernel without panicking, the two agreeing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamscore::model::pmml::fields::Raw;
use streamscore::model::pmml::PmmlModel;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(model) = PmmlModel::parse(text) else {
        return;
    };
    let raws = [
        Raw::Number(0.0),
        Raw::Number(-1.5),
        Raw::Number(1e300),
        Raw::Missing,
        Raw::Text("a"),
    ];
    let mut rows = Vec::new();
    for pick in 0..raws.len() {
        for i in 0..model.features().len() {
            match model.prepare(i, raws[(pick + i) % raws.len()]) {
                Ok(v) => rows.push(v),
                Err(_) => rows.push(f64::NAN),
            }
        }
    }
    let fast = model.predict_rows(&rows);
    let exact = model.predict_rows_exact(&rows);
    assert_eq!(fast.len(), exact.len());
    assert_eq!(format!("{fast:?}"), format!("{exact:?}"));
    let _ = model.evaluate(&serde_json::Map::new());
    let _ = model.schema();
});
