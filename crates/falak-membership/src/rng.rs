//! The seeded generator handed to foca.
//!
//! Falak seeds everything from `rand_chacha` 0.3 (the `rand` 0.8 family the rest of the
//! workspace uses), while foca 1 asks for a `rand` 0.9 generator. [`FocaRng`] wraps our
//! `ChaCha8Rng` and implements the 0.9 `RngCore`, so foca's choices stay a pure function of the
//! seed given to [`crate::Membership::new`].

use rand::RngCore as _;
use rand_chacha::ChaCha8Rng;

/// A `ChaCha8Rng` (rand 0.8 family) speaking the rand 0.9 `RngCore` that foca requires.
#[derive(Debug, Clone)]
pub struct FocaRng(pub ChaCha8Rng);

impl rand_core_09::RngCore for FocaRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn adapter_yields_the_wrapped_stream() {
        let mut plain = ChaCha8Rng::seed_from_u64(3);
        let mut wrapped = FocaRng(ChaCha8Rng::seed_from_u64(3));
        assert_eq!(rand_core_09::RngCore::next_u64(&mut wrapped), plain.next_u64());
        assert_eq!(rand_core_09::RngCore::next_u32(&mut wrapped), plain.next_u32());
    }
}
