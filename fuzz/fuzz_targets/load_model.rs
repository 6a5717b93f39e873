//! Any bytes as a model file: loading returns an error or a model, never panics, and a model
//! that loads scores a batch without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamscore::model::{LoadedModel, ModelFile};
use streamscore::record::{SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use streamscore::transform::{transform_batch, Input};

const RECORDS: &[&[u8]] = &[
    br#"{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2}"#,
    br#"{"uid":196,"n":5}"#,
    br#"{"uid":-1,"n":100}"#,
    b"{}",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        ModelFile::from_json(bytes).ok()
    } else {
        // A mutation can hardly keep the content hash right, so on its own the fuzzer would
        // stop at the version check. Re-stamping the version, as a hand-edited file would
        // be, lets it reach the validation behind it.
        serde_json::from_slice::<ModelFile>(bytes)
            .ok()
            .map(|f| ModelFile::new(f.meta, f.body))
    };
    let Some(model) = file.and_then(|f| LoadedModel::from_file(f).ok()) else {
        return;
    };
    let inputs: Vec<Input<'_>> = RECORDS
        .iter()
        .enumerate()
        .map(|(i, r)| Input {
            payload: Some(*r),
            source: SourcePosition {
                partition: 0,
                offset: i as i64,
            },
        })
        .collect();
    let outcomes = transform_batch(&model, &inputs, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(outcomes.len(), inputs.len());
});
