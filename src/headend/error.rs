//! The head-end's error: what went wrong, naming the channel's field or input.

use crate::scramble::ScrambleError;

/// Why a channel or the head-end could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum HeadendError {
    /// The spec asks for something that cannot be (the message names the field).
    #[error("{0}")]
    Config(String),
    /// A part failed: `what` names it (an input, an ECMG, the store); the cause follows.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The data path stopped.
    #[error(transparent)]
    Scramble(#[from] ScrambleError),
}

impl HeadendError {
    /// Whether the run ended because the reader of stdout went away (`| head`): the
    /// command then ends quietly, as Unix tools do.
    pub fn is_stdout_closed(&self) -> bool {
        match self {
            HeadendError::Scramble(ScrambleError::Io(io)) => io.is_stdout_closed(),
            HeadendError::Failed { source, .. } => source
                .downcast_ref::<crate::io::IoError>()
                .is_some_and(crate::io::IoError::is_stdout_closed),
            _ => false,
        }
    }
}

/// An error with its causes, `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(e) = src {
            write!(f, ": {e}")?;
            src = e.source();
        }
        Ok(())
    }
}

/// `.context("what")` for the head-end's results, as anyhow has it at the CLI edge.
pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, HeadendError>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, HeadendError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, HeadendError> {
        self.map_err(|e| HeadendError::Failed {
            what: what.into(),
            source: Box::new(e),
        })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, HeadendError> {
        self.map_err(|e| HeadendError::Failed {
            what: what(),
            source: Box::new(e),
        })
    }
}

/// Return a [`HeadendError::Config`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::headend::HeadendError::Config(format!($($arg)*)))
    };
}
pub(crate) use bail;
