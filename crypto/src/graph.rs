//! The neighbour graph: complete (SecAgg) or Harary H(k, n) over a seeded permutation (SecAgg+).
