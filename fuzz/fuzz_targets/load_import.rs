//! Any bytes as an XGBoost JSON, LightGBM text or ONNX model (the first byte picks which):
//! loading returns an error or a model, never panics or hangs, and a model that loads
//! scores complete, missing, zero and extreme rows with the kernel and the plain
//! node-by-node walk agreeing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamscore::model::ensemble::{lightgbm, onnx, xgboost};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let loaded = match mode % 3 {
        0 => xgboost::parse(bytes, &[], &[]),
        1 => lightgbm::parse(bytes, &[], &[]),
        _ => onnx::parse(bytes, &[], &[]),
    };
    let Ok(model) = loaded else {
        return;
    };
    let values = [0.0, -1.5, 1e-40, f64::NAN, 3.25, -1e30, 1e30];
    let n = model.features.len();
    let mut rows = Vec::new();
    for r in 0..17 {
        for i in 0..n {
            rows.push(values[(r * 3 + i) % values.len()]);
        }
    }
    let fast = model.predict_rows(&rows);
    let walked = model.predict_rows_walked(&rows);
    assert_eq!(fast.len(), 17);
    assert_eq!(format!("{fast:?}"), format!("{walked:?}"));
});
