//! What the commands print on stdout goes through here, so a closed or full stdout is an
//! error value instead of `println!`'s panic.
//!
//! A reader that goes away early (`castmux probe FILE | head -1`, `| true`, or
//! `castmux descramble -o - | head -c 1M` for the stream itself) is the reader's choice, as
//! it is for `cat`: the command ends quietly with status 0 (see [`super::main`]).
//! Any other failure (`> /dev/full`) is an error with a non-zero status, because the output
//! the user asked for is not there.

use std::fmt;
use std::io::Write;

use castmux::io::IoError;
use castmux::scramble::ScrambleError;

/// A write to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct StdoutError(std::io::Error);

impl StdoutError {
    /// The reader closed the pipe (EPIPE).
    pub fn is_closed(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

impl From<std::io::Error> for StdoutError {
    fn from(e: std::io::Error) -> Self {
        StdoutError(e)
    }
}

/// Print one line.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)?;
    o.write_all(b"\n")?;
    o.flush()?;
    Ok(())
}

/// Print `text` as it is.
pub fn text(text: &str) -> Result<(), StdoutError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}

/// Run `f` on a buffered stdout, then flush; for output of many lines.
pub fn with<F>(f: F) -> Result<(), StdoutError>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    f(&mut o)?;
    o.flush()?;
    Ok(())
}

/// Whether `e` is stdout closed by its reader, anywhere in its chain: a report printed
/// there, or the stream written there (`-o -`).
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(StdoutError::is_closed)
            || c.downcast_ref::<IoError>()
                .is_some_and(IoError::is_stdout_closed)
            // a transparent wrapper hides the IoError from the chain: look inside
            || c.downcast_ref::<ScrambleError>()
                .is_some_and(|e| matches!(e, ScrambleError::Io(io) if io.is_stdout_closed()))
            || c.downcast_ref::<castmux::headend::HeadendError>()
                .is_some_and(castmux::headend::HeadendError::is_stdout_closed)
    })
}
