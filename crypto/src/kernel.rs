//! The vector kernel: fused expand-and-add / expand-and-subtract of masks into a `u32`
//! accumulator over Z_2^32 (wrapping), over cache-sized chunks, split across threads by range.
//!
//! Masks are applied in passes of [`MASKS_PER_PASS`]: a pass keys the cipher of each of its
//! masks once, then walks the accumulator in chunks of a few KiB (so a chunk stays in L1/L2) and
//! expands every mask of the pass into a small keystream buffer that is added or subtracted at
//! once. The cipher states of a pass (about 400 bytes each) stay in L1/L2 for the whole pass,
//! so the cost per mask is the keystream and the add, whatever the number of masks: a server
//! regenerating tens of thousands of masks touches exactly the memory that one regenerating
//! thirty-two does, plus one pass over the accumulator per group. Threads take contiguous
//! ranges of the vector, never whole clients, so the work splits evenly whatever the number of
//! masks.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::prg::{MaskCipher, MaskSeed};
use ctr::cipher::{StreamCipher, StreamCipherSeek};

/// Whether a mask is added or subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// acc += mask
    Add,
    /// acc −= mask
    Sub,
}

impl Sign {
    /// σ(u, v) = +1 if u < v, −1 otherwise.
    pub fn pairwise<T: Ord>(u: &T, v: &T) -> Sign {
        if u < v { Sign::Add } else { Sign::Sub }
    }

    /// The opposite sign.
    pub fn flip(self) -> Sign {
        match self {
            Sign::Add => Sign::Sub,
            Sign::Sub => Sign::Add,
        }
    }
}

/// Default chunk: 4096 words = 16 KiB of keystream, comfortably inside L1 + L2.
pub const DEFAULT_CHUNK_WORDS: usize = 4096;

/// Masks applied per pass over the accumulator. Their cipher states (about 13 KB in all) stay
/// in L1/L2 while the pass runs; one cipher state per mask of a whole round (52,850 masks, 21 MB,
/// for n = 500 with 150 dropouts) would be streamed from memory again for every chunk.
pub const MASKS_PER_PASS: usize = 32;

/// How the kernel runs: chunk size and an optional thread pool.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'p> {
    /// Words per chunk.
    pub chunk_words: usize,
    /// Threads split the vector by range; `None` runs on the calling thread.
    pub pool: Option<&'p rayon::ThreadPool>,
}

impl Default for Kernel<'_> {
    fn default() -> Self {
        Kernel { chunk_words: DEFAULT_CHUNK_WORDS, pool: None }
    }
}

impl<'p> Kernel<'p> {
    /// A single-threaded kernel.
    pub fn single() -> Self {
        Self::default()
    }

    /// A kernel that splits work across `pool`.
    pub fn with_pool(pool: &'p rayon::ThreadPool) -> Self {
        Kernel { chunk_words: DEFAULT_CHUNK_WORDS, pool: Some(pool) }
    }

    /// acc[i] ±= mask_j[offset + i] for every mask j, wrapping.
    pub fn apply(&self, acc: &mut [u32], offset: usize, masks: &[(&MaskSeed, Sign)]) {
        if masks.is_empty() || acc.is_empty() {
            return;
        }
        let chunk = self.chunk_words.max(1);
        match self.pool {
            Some(pool) if pool.current_num_threads() > 1 && acc.len() > chunk => {
                let threads = pool.current_num_threads();
                // Ranges are whole chunks, so every thread runs the same inner loop.
                let per = acc.len().div_ceil(threads).div_ceil(chunk) * chunk;
                pool.install(|| {
                    acc.par_chunks_mut(per).enumerate().for_each(|(i, range)| {
                        apply_range(range, offset + i * per, masks, chunk);
                    });
                });
            }
            _ => apply_range(acc, offset, masks, chunk),
        }
    }

    /// acc[i] += words[i], wrapping (adding a complete masked input to the running sum).
    pub fn add_vector(&self, acc: &mut [u32], words: &[u32]) -> Result<()> {
        if acc.len() != words.len() {
            return Err(Error::WrongLength { got: words.len(), expected: acc.len() });
        }
        let add = |a: &mut [u32], w: &[u32]| {
            for (x, y) in a.iter_mut().zip(w) {
                *x = x.wrapping_add(*y);
            }
        };
        match self.pool {
            Some(pool) if pool.current_num_threads() > 1 && acc.len() > self.chunk_words => {
                let per = acc.len().div_ceil(pool.current_num_threads());
                pool.install(|| {
                    acc.par_chunks_mut(per).zip(words.par_chunks(per)).for_each(|(a, w)| add(a, w));
                });
            }
            _ => add(acc, words),
        }
        Ok(())
    }
}

fn apply_range(acc: &mut [u32], offset: usize, masks: &[(&MaskSeed, Sign)], chunk: usize) {
    // The keystream is mask material: wiped when the buffer is dropped.
    let mut buf = zeroize::Zeroizing::new(vec![0u8; chunk * 4]);
    let mut ciphers: Vec<(MaskCipher, Sign)> = Vec::with_capacity(MASKS_PER_PASS.min(masks.len()));
    for pass in masks.chunks(MASKS_PER_PASS) {
        // Dropping the previous pass's ciphers wipes their keys (the cipher zeroizes on drop).
        ciphers.clear();
        ciphers.extend(pass.iter().map(|(seed, sign)| (seed.cipher_at_word(offset), *sign)));
        let mut pos = offset;
        for acc_chunk in acc.chunks_mut(chunk) {
            let bytes = &mut buf[..acc_chunk.len() * 4];
            for (cipher, sign) in ciphers.iter_mut() {
                // Every cipher advances in step with `pos`.
                debug_assert_eq!(cipher.current_pos::<u64>(), pos as u64 * 4);
                cipher.write_keystream(bytes);
                let words = bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                match sign {
                    Sign::Add => {
                        acc_chunk.iter_mut().zip(words).for_each(|(a, m)| *a = a.wrapping_add(m))
                    }
                    Sign::Sub => {
                        acc_chunk.iter_mut().zip(words).for_each(|(a, m)| *a = a.wrapping_sub(m))
                    }
                }
            }
            pos += acc_chunk.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeds(n: usize, tag: u8) -> Vec<MaskSeed> {
        (0..n).map(|i| MaskSeed::from_bytes([tag ^ i as u8; 16])).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Expand-and-add then expand-and-subtract is the identity, for any offset and length.
        #[test]
        fn add_then_subtract_is_identity(
            start in proptest::collection::vec(any::<u32>(), 1..3000),
            offset in 0usize..100_000,
            n_masks in 1usize..6,
            chunk in 1usize..700,
        ) {
            let s = seeds(n_masks, 0x5a);
            let add: Vec<_> = s.iter().map(|m| (m, Sign::Add)).collect();
            let sub: Vec<_> = s.iter().map(|m| (m, Sign::Sub)).collect();
            let mut acc = start.clone();
            let k = Kernel { chunk_words: chunk, pool: None };
            k.apply(&mut acc, offset, &add);
            prop_assert_ne!(&acc, &start);
            k.apply(&mut acc, offset, &sub);
            prop_assert_eq!(acc, start);
        }

        /// Threaded (4 threads, tiny chunks) equals single-threaded.
        #[test]
        fn threaded_equals_single_threaded(
            len in 1usize..5000,
            offset in 0usize..10_000,
            signs in proptest::collection::vec(any::<bool>(), 1..6),
            chunk in 1usize..64,
        ) {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
            let s = seeds(signs.len(), 0x33);
            let masks: Vec<_> = s
                .iter()
                .zip(&signs)
                .map(|(m, &add)| (m, if add { Sign::Add } else { Sign::Sub }))
                .collect();
            let mut single = vec![7u32; len];
            let mut threaded = single.clone();
            Kernel::single().apply(&mut single, offset, &masks);
            Kernel { chunk_words: chunk, pool: Some(&pool) }.apply(&mut threaded, offset, &masks);
            prop_assert_eq!(single, threaded);
        }
    }

    /// More masks than one pass holds (two full passes and a partial one), each expanded on
    /// its own and summed, equal the kernel's result, single-threaded and threaded.
    #[test]
    fn masks_in_several_passes_match_their_expansions() {
        let n = 2 * MASKS_PER_PASS + 5;
        let s = seeds(n, 0x77);
        let masks: Vec<_> = s
            .iter()
            .enumerate()
            .map(|(i, m)| (m, if i % 3 == 0 { Sign::Sub } else { Sign::Add }))
            .collect();
        let (len, offset) = (1000, 123);
        let mut expected = vec![5u32; len];
        let mut words = vec![0u32; len];
        for (m, sign) in &masks {
            m.expand_into(offset, &mut words);
            for (e, w) in expected.iter_mut().zip(&words) {
                *e = match sign {
                    Sign::Add => e.wrapping_add(*w),
                    Sign::Sub => e.wrapping_sub(*w),
                };
            }
        }
        let mut single = vec![5u32; len];
        Kernel { chunk_words: 64, pool: None }.apply(&mut single, offset, &masks);
        assert_eq!(single, expected);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut threaded = vec![5u32; len];
        Kernel { chunk_words: 64, pool: Some(&pool) }.apply(&mut threaded, offset, &masks);
        assert_eq!(threaded, expected);
    }

    #[test]
    fn add_vector_threaded() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let mut a: Vec<u32> = (0..10_000).collect();
        let b: Vec<u32> = (0..10_000).map(|i| u32::MAX - i).collect();
        Kernel { chunk_words: 16, pool: Some(&pool) }.add_vector(&mut a, &b).unwrap();
        assert!(a.iter().all(|&x| x == u32::MAX));
        assert!(Kernel::single().add_vector(&mut a, &b[..5]).is_err());
    }

    #[test]
    fn add_matches_expand() {
        let seed = MaskSeed::from_bytes([9; 16]);
        let mut acc = vec![1u32; 3000];
        Kernel { chunk_words: 100, pool: None }.apply(&mut acc, 10, &[(&seed, Sign::Add)]);
        let mut m = vec![0u32; 3000];
        seed.expand_into(10, &mut m);
        for (a, m) in acc.iter().zip(&m) {
            assert_eq!(*a, m.wrapping_add(1));
        }
    }
}
