//! The live model, swapped atomically on reload.
//!
//! Scoring takes a snapshot (`current`) once per batch, so a batch in flight finishes on the
//! model it started with, and a reload never blocks scoring: the new file is read, validated
//! and compiled off the hot path, then published with one pointer swap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{LoadedModel, ModelError};

pub struct ModelStore {
    current: ArcSwap<LoadedModel>,
    configured_path: PathBuf,
    /// Reloads may only read files below this directory (the configured file's own).
    model_dir: PathBuf,
    allow_kind_change: bool,
    /// Serialises reloads so that validation and swap act on the same "old" model.
    reload_lock: Mutex<()>,
}

impl ModelStore {
    /// Loads the configured model; a service with no valid model refuses to start.
    ///
    /// The configured path is kept as given (made absolute), not resolved: a ConfigMap
    /// update or a deploy step swaps a symlink (`..data`, `current`), and every reload must
    /// follow the link as it is then, not the file it pointed to at start-up.
    pub fn open(path: &Path, allow_kind_change: bool) -> Result<Self, ModelError> {
        let model = LoadedModel::load(path)?;
        let io_err = |error| ModelError::Io {
            path: path.to_owned(),
            error,
        };
        let configured_path = std::path::absolute(path).map_err(io_err)?;
        let model_dir = configured_path
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .canonicalize()
            .map_err(io_err)?;
        Ok(Self {
            current: ArcSwap::from_pointee(model),
            configured_path,
            model_dir,
            allow_kind_change,
            reload_lock: Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<LoadedModel> {
        self.current.load_full()
    }

    pub fn configured_path(&self) -> &Path {
        &self.configured_path
    }

    /// Re-reads the configured file, or `path` when given (resolved against the model
    /// directory and refused if it leaves it). A file that fails any check leaves the
    /// running model in place.
    pub fn reload(&self, path: Option<&Path>) -> Result<Arc<LoadedModel>, ModelError> {
        let path = match path {
            None => self.configured_path.clone(),
            Some(p) => self.resolve_in_model_dir(p)?,
        };
        self.replace(LoadedModel::load(&path)?)
    }

    /// Swaps in a model built elsewhere (an upload), under the same rules as a reload: the
    /// kind and the features may not change unless allowed, and a refusal keeps the old.
    pub fn replace(&self, candidate: LoadedModel) -> Result<Arc<LoadedModel>, ModelError> {
        self.replace_shared(Arc::new(candidate))
    }

    /// `replace` for a model already shared (a shadow model being promoted).
    pub fn replace_shared(
        &self,
        candidate: Arc<LoadedModel>,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.check(&candidate)?;
        self.current.store(Arc::clone(&candidate));
        Ok(candidate)
    }

    /// Whether `candidate` may replace the current model: the rules of a reload.
    pub fn check(&self, candidate: &LoadedModel) -> Result<(), ModelError> {
        let old = self.current.load();
        if candidate.kind() != old.kind() && !self.allow_kind_change {
            return Err(ModelError::KindChanged {
                from: old.kind(),
                to: candidate.kind(),
            });
        }
        if candidate.kind() == old.kind() && candidate.meta.features != old.meta.features {
            return Err(ModelError::FeaturesChanged {
                from: old.meta.features.clone(),
                to: candidate.meta.features.clone(),
            });
        }
        Ok(())
    }

    /// Loads a file in the model directory without swapping it in (a shadow candidate),
    /// checked by the rules of a reload.
    pub fn load_candidate(&self, path: &Path) -> Result<LoadedModel, ModelError> {
        let candidate = LoadedModel::load(&self.resolve_in_model_dir(path)?)?;
        self.check(&candidate)?;
        Ok(candidate)
    }

    /// A file named by a reload request, which must be in the model directory. Every way of
    /// not being one (a `..` or absolute path, a missing file, a symlink leading out) gets
    /// the same answer, so the endpoint cannot be used to learn which files exist elsewhere.
    fn resolve_in_model_dir(&self, path: &Path) -> Result<PathBuf, ModelError> {
        let refused = || ModelError::OutsideModelDir(path.to_owned());
        if path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(refused());
        }
        let resolved = self
            .model_dir
            .join(path)
            .canonicalize()
            .map_err(|_| refused())?;
        if resolved.starts_with(&self.model_dir) && resolved.is_file() {
            Ok(resolved)
        } else {
            Err(refused())
        }
    }
}
