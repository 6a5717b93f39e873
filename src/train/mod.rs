//! Offline training: turns data files into the model files the service loads.

pub mod iris;
pub mod progress;
pub mod recommender;
pub mod ratings;
