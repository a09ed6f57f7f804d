//! Fuzz corpora: the seed inputs committed under `fuzz/corpus/<target>/` at the repository
//! root, replayed by each parser's fuzz test together with seeded mutations of them (bit and
//! byte flips, truncations, splices of two entries, repeated and deleted runs), so the inputs
//! that matter are run on every `cargo test`, deterministically.
//!
//! A crash found by a fuzz test is fixed and its input added to the target's corpus.

use std::path::PathBuf;

/// The corpus directory of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Every file of `target`'s corpus, sorted by name.
///
/// # Panics
/// When the directory is missing or empty: every fuzz target has a corpus.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} cannot be read: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "fuzz corpus {} is empty", dir.display());
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
        .collect()
}

/// A small deterministic generator (xorshift64*), so a failing mutation is found again
/// from the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }
}

/// Bytes that often sit on a parser's decision points.
const INTERESTING: &[u8] = b"\x00\x01\x7f\x80\xff\"{}[]:,\\\n\r 0-9aAzZ$/.";

/// One mutation of `input`, drawing a second entry from `pool` for splices.
pub fn mutate(input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(8) {
            // Flip one bit.
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            // Overwrite a byte with an interesting one.
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // Truncate.
            2 if len > 0 => out.truncate(rng.below(len)),
            // Splice: our head, another entry's tail.
            3 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            // Repeat a run.
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                let run = out[start..end].to_vec();
                for _ in 0..1 + rng.below(8) {
                    out.splice(start..start, run.iter().copied());
                }
            }
            // Delete a run.
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                out.drain(start..end);
            }
            // Insert random bytes.
            6 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64().to_le_bytes()[0]).collect();
                out.splice(at..at, bytes);
            }
            // Set a 16- or 32-bit big-endian field to an extreme.
            _ if len >= 4 => {
                let at = rng.below(len - 3);
                let v: [u8; 4] = match rng.below(4) {
                    0 => [0xff; 4],
                    1 => [0; 4],
                    2 => [0x7f, 0xff, 0xff, 0xff],
                    _ => [0x80, 0, 0, 0],
                };
                let width = if rng.below(2) == 0 { 2 } else { 4 };
                out[at..at + width].copy_from_slice(&v[..width]);
            }
            _ => out.push(INTERESTING[rng.below(INTERESTING.len())]),
        }
    }
    out
}

/// Run `f` on every entry of `target`'s corpus and on `mutations` seeded mutations of each,
/// then print (stderr) and return how many inputs ran.
pub fn replay(target: &str, mutations: usize, seed: u64, mut f: impl FnMut(&[u8])) -> u64 {
    let entries = corpus(target);
    let mut rng = Rng::new(seed);
    let mut runs = 0u64;
    for entry in &entries {
        f(entry);
        runs += 1;
        for _ in 0..mutations {
            let m = mutate(entry, &entries, &mut rng);
            f(&m);
            runs += 1;
        }
    }
    report(target, &format!("{} corpus entries + mutations", entries.len()), runs);
    runs
}

/// Print the one line a fuzz run leaves for the record: target and executions.
#[expect(clippy::print_stderr, reason = "the execution count is the test's report")]
pub fn report(target: &str, what: &str, runs: u64) {
    eprintln!("fuzz {target}: {runs} executions ({what})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mutations_are_deterministic_and_vary() {
        let pool = vec![b"hello world".to_vec(), b"{\"a\": [1, 2]}".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|i| mutate(&pool[i % 2], &pool, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let distinct: std::collections::HashSet<_> = run(7).into_iter().collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
    }
}
