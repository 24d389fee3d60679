//! A byte allowance for reading untrusted archives: the tar reader pulls (decompressed) bytes
//! through a [`Bounded`] reader that fails once they pass what the caller allowed so far —
//! each entry's content as its header announced it, plus a small allowance for the headers —
//! so a gzip bomb or a 1 GiB "long name" stops early instead of being buffered. Code bundles
//! and image layers both read through it.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// How many bytes a [`Bounded`] reader may still pass.
#[derive(Debug)]
pub struct Budget {
    allowed: Cell<u64>,
    used: Cell<u64>,
}

impl Budget {
    /// A budget that first allows `initial` bytes (the first header).
    pub fn new(initial: u64) -> Rc<Budget> {
        Rc::new(Budget { allowed: Cell::new(initial), used: Cell::new(0) })
    }

    /// Allow `bytes` more.
    pub fn allow(&self, bytes: u64) {
        self.allowed.set(self.allowed.get().saturating_add(bytes));
    }

    /// Allow `bytes` from what has been read so far (the current entry's content and the next
    /// header), whatever was allowed before.
    pub fn allow_from_here(&self, bytes: u64) {
        self.allowed.set(self.used.get().saturating_add(bytes));
    }

    /// Whether the reader stopped at the allowance (so a read error means "too large").
    pub fn exceeded(&self) -> bool {
        self.used.get() >= self.allowed.get()
    }
}

/// `inner`, stopped at `budget`; `what` names the stream in the error ("the archive's").
pub struct Bounded<R> {
    inner: R,
    budget: Rc<Budget>,
    what: &'static str,
}

impl<R> Bounded<R> {
    pub fn new(inner: R, budget: Rc<Budget>, what: &'static str) -> Bounded<R> {
        Bounded { inner, budget, what }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.allowed.get().saturating_sub(self.budget.used.get());
        if left == 0 {
            return Err(io::Error::other(format!("{} headers exceed their size allowance", self.what)));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.budget.used.set(self.budget.used.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_allowance_and_resume_when_raised() {
        let budget = Budget::new(4);
        let mut reader = Bounded::new(&b"0123456789"[..], budget.clone(), "the test's");
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).unwrap(), 4);
        assert!(budget.exceeded());
        let error = reader.read(&mut buf).unwrap_err().to_string();
        assert_eq!(error, "the test's headers exceed their size allowance");
        budget.allow(2);
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        budget.allow_from_here(3);
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        assert!(budget.exceeded());
    }
}
