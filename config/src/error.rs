//! Configuration problems, each pinned to a file, a line and a field.

use std::fmt;

/// Whether a problem refuses the configuration or is only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration is refused.
    Error,
    /// The configuration is accepted; the operator should look.
    Warning,
}

/// One problem: `file:line: field: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the file as given.
    pub file: String,
    /// 1-based line of the offending value (of its table when the field is missing).
    pub line: usize,
    /// Dotted path of the field, e.g. `class[1].lan_pool` (`class[1]` is the second class).
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}:{}: {tag}{}: {}", self.file, self.line, self.field, self.reason)
    }
}

/// Every error found in one file (warnings travel with the accepted config instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
