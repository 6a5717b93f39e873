//! Any bytes through both decoders and scorers: nothing may panic, every input gets exactly
//! one outcome, and an outcome does not depend on the record's neighbours in the batch.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use streamscore::model::LoadedModel;
use streamscore::record::{SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use streamscore::transform::{transform_batch, Input, Outcome};

/// ASCII record separator: splits one fuzz input into a batch, so that the fuzzer also
/// explores batches mixing accepted and rejected records.
const SEPARATOR: u8 = 0x1e;

fn models() -> &'static [LoadedModel] {
    static MODELS: OnceLock<Vec<LoadedModel>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        ["iris-forest.json", "recommender.json"]
            .iter()
            .map(|name| LoadedModel::load(&dir.join(name)).expect("shipped model loads"))
            .collect()
    })
}

fn input(payload: &[u8], offset: usize) -> Input<'_> {
    Input {
        // An empty segment stands for a record with no value at all.
        payload: (!payload.is_empty()).then_some(payload),
        source: SourcePosition {
            partition: 0,
            offset: offset as i64,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let inputs: Vec<Input<'_>> = data
        .split(|&b| b == SEPARATOR)
        .enumerate()
        .map(|(i, payload)| input(payload, i))
        .collect();
    for model in models() {
        let outcomes = transform_batch(model, &inputs, DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(outcomes.len(), inputs.len());
        if inputs.len() == 1 {
            continue;
        }
        for (input, outcome) in inputs.iter().zip(&outcomes) {
            let alone =
                transform_batch(model, std::slice::from_ref(input), DEFAULT_MAX_RECORD_BYTES);
            assert_eq!(alone.first(), Some(outcome));
            if let Outcome::Scored(bytes) = outcome {
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes).expect("output is JSON");
            }
        }
    }
});
