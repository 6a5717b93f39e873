//! Offline training: turns data files into the model files the service loads.

pub mod cart;
pub mod iris;
pub mod progress;
pub mod ratings;
pub mod recommender;
