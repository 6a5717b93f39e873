//! Placeholder: replaced by the flat forest kernel.
use super::fields::Column;
use super::model::{Node, Prediction};
use super::PmmlModel;

#[derive(Debug)]
pub struct Kernel;

impl Kernel {
    pub fn compile(_root: &Node, _columns: &[Column]) -> Option<Self> {
        None
    }
    pub fn n_trees(&self) -> usize {
        0
    }
    pub fn predict(
        &self,
        _model: &PmmlModel,
        _inputs: &[f64],
        _complete: &[bool],
    ) -> Vec<Prediction> {
        Vec::new()
    }
}
