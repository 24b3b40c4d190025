//! What every section's `compile` is given: the loaded file and one collector for the errors
//! and warnings of all sections, so that one bad section never hides another's problems.

use super::{Config, ConfigError, Loaded};
use std::cell::{RefCell, RefMut};
use std::path::PathBuf;

pub struct Ctx<'a> {
    pub loaded: &'a Loaded,
    errors: RefCell<Vec<ConfigError>>,
    warnings: RefCell<Vec<String>>,
}

impl<'a> Ctx<'a> {
    /// Start with the structural errors found while loading.
    pub fn new(loaded: &'a Loaded) -> Self {
        Ctx {
            loaded,
            errors: RefCell::new(loaded.errors.clone()),
            warnings: RefCell::default(),
        }
    }

    pub fn config(&self) -> &'a Config {
        &self.loaded.config
    }

    /// Record an error at a YAML path.
    pub fn error(&self, path: impl Into<String>, message: impl Into<String>) {
        self.errors
            .borrow_mut()
            .push(ConfigError::new(path, message));
    }

    pub fn extend(&self, errors: impl IntoIterator<Item = ConfigError>) {
        self.errors.borrow_mut().extend(errors);
    }

    /// The collector itself, for helpers that take `&mut Vec<ConfigError>` (one statement).
    pub fn errors(&self) -> RefMut<'_, Vec<ConfigError>> {
        self.errors.borrow_mut()
    }

    /// Errors so far: compare before and after a step to see whether it failed.
    pub fn error_count(&self) -> usize {
        self.errors.borrow().len()
    }

    /// A non-fatal remark for the operator.
    pub fn warn(&self, warning: impl Into<String>) {
        self.warnings.borrow_mut().push(warning.into());
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        self.loaded.resolve(p)
    }

    /// The names defined in a section, for "(defined: …)" hints.
    pub fn defined(&self, section: &str) -> String {
        let v = self.config().names(section);
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Every error and warning, in the order found.
    pub fn finish(self) -> (Vec<ConfigError>, Vec<String>) {
        (self.errors.into_inner(), self.warnings.into_inner())
    }
}
