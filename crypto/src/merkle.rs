//! RFC 6962 Merkle trees over SHA-256: the tree a dealer signs its share commitments under.
//!
//! leaf = SHA-256(0x00 ‖ entry), node = SHA-256(0x01 ‖ left ‖ right). The tree hash of n > 1
//! leaves splits them at the largest power of two below n (RFC 6962 §2.1), which is the same as
//! building the tree level by level and promoting an odd last node unchanged — never
//! duplicating it, so no two different leaf lists share a root. An inclusion proof is RFC 6962's
//! PATH(m, D\[n\]) (siblings from the leaf up) and is checked by RFC 9162 §2.1.3.2, which
//! recomputes the root from the leaf, its index, the tree size and the path: a path of the
//! wrong length, an index at or past the size, or a sibling changed gives another root.
//!
//! The protocol never builds an empty tree (a dealer always has its own entry), so a size of 0
//! is refused rather than given RFC 6962's empty-tree hash.

use sha2::{Digest, Sha256};

/// A SHA-256 value in the tree.
pub type Hash = [u8; 32];

/// The most hashes an inclusion proof can hold: a tree of fewer than 2^32 leaves has depth at
/// most 32.
pub const MAX_PATH: usize = 32;

/// SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    Sha256::new().chain_update([0x00]).chain_update(entry).finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([0x01]).chain_update(left).chain_update(right).finalize().into()
}

/// A whole tree, kept level by level so that every leaf's path costs no hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// `levels[0]` the leaf hashes, each next level the one above, the last the root alone.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree of `leaves` (leaf hashes, in order); `None` for no leaves or 2^32 or more.
    pub fn new(leaves: Vec<Hash>) -> Option<Tree> {
        if leaves.is_empty() || u32::try_from(leaves.len()).is_err() {
            return None;
        }
        let mut levels = vec![leaves];
        while levels.last().expect("one level at least").len() > 1 {
            let below = levels.last().expect("one level at least");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [odd] => *odd,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Some(Tree { levels })
    }

    /// The tree of these entries (each hashed as a leaf).
    pub fn of_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Option<Tree> {
        Tree::new(entries.into_iter().map(leaf_hash).collect())
    }

    /// Number of leaves.
    pub fn size(&self) -> u32 {
        self.levels[0].len() as u32
    }

    /// The tree hash.
    pub fn root(&self) -> Hash {
        self.levels.last().expect("one level at least")[0]
    }

    /// RFC 6962 PATH(index, D\[size\]): the siblings on the way from leaf `index` to the root,
    /// lowest first (a promoted node has no sibling at its level). `None` past the last leaf.
    pub fn path(&self, index: u32) -> Option<Vec<Hash>> {
        if index >= self.size() {
            return None;
        }
        let mut i = index as usize;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            i /= 2;
        }
        Some(path)
    }
}

/// The root that leaf hash `leaf`, at `index` of a tree of `size` leaves, and `path` give by
/// RFC 9162 §2.1.3.2; `None` if they fit no tree (index ≥ size, size 0, a path too long or too
/// short). The caller compares the root with a signed one, and the size must be signed with it:
/// the path alone does not fix the size (leaf 0 of a tree of 17 and of 18 leaves recompute the
/// same root from the same five hashes).
pub fn root_from_path(leaf: &Hash, index: u32, size: u32, path: &[Hash]) -> Option<Hash> {
    if index >= size || path.len() > MAX_PATH {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The largest power of two below n > 1: where RFC 6962 splits n leaves.
    fn largest_power_of_two_below(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }

    /// RFC 6962's tree hash, written as its recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = largest_power_of_two_below(leaves.len());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    /// RFC 6962's PATH, written as its recursive definition.
    fn path_rfc(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = largest_power_of_two_below(leaves.len());
        if m < k {
            let mut p = path_rfc(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path_rfc(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn hex(h: &str) -> Hash {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The reference inputs of RFC 6962's test data (certificate-transparency).
    const INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Their tree hashes for sizes 1..=8.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_and_paths_match_the_rfc_6962_test_data() {
        for size in 1..=8 {
            let tree = Tree::of_entries(INPUTS[..size].iter().copied()).unwrap();
            assert_eq!(tree.root(), hex(ROOTS[size - 1]), "size {size}");
        }
        let cases: [(u32, u32, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, expected) in cases {
            let tree = Tree::of_entries(INPUTS[..size as usize].iter().copied()).unwrap();
            let path = tree.path(index).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|h| hex(h)).collect();
            assert_eq!(path, expected, "index {index} of {size}");
            let leaf = leaf_hash(INPUTS[index as usize]);
            assert_eq!(root_from_path(&leaf, index, size, &path), Some(tree.root()));
        }
    }

    #[test]
    fn no_tree_of_no_leaves() {
        assert!(Tree::new(Vec::new()).is_none());
        assert_eq!(root_from_path(&[0; 32], 0, 0, &[]), None);
    }

    proptest! {
        /// The level-by-level tree is RFC 6962's recursive one, and every leaf's path gives
        /// back the root — and only with its own index, size and siblings.
        #[test]
        fn every_path_recomputes_the_root_and_nothing_else_does(
            size in 1usize..70,
            seed in any::<u64>(),
            pick in any::<prop::sample::Index>(),
            flip in 0usize..(32 * 8),
        ) {
            let leaves: Vec<Hash> =
                (0..size).map(|i| leaf_hash(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat())).collect();
            let tree = Tree::new(leaves.clone()).unwrap();
            prop_assert_eq!(tree.root(), mth(&leaves));
            for (i, leaf) in leaves.iter().enumerate() {
                let path = tree.path(i as u32).unwrap();
                prop_assert_eq!(&path, &path_rfc(i, &leaves));
                prop_assert_eq!(root_from_path(leaf, i as u32, size as u32, &path), Some(tree.root()));
            }
            let i = pick.index(size);
            let path = tree.path(i as u32).unwrap();
            let root = Some(tree.root());
            // Another index, one sibling more or less, a changed sibling or leaf. (Another size
            // can give the same root — leaf 0 of 17 and of 18 share a path shape — which is why
            // the dealer signs the size m beside the root.)
            for other in 0..size as u32 {
                if other != i as u32 && leaves[other as usize] != leaves[i] {
                    prop_assert_ne!(root_from_path(&leaves[i], other, size as u32, &path), root);
                }
            }
            prop_assert_eq!(root_from_path(&leaves[i], size as u32, size as u32, &path), None);
            let mut longer = path.clone();
            longer.push([7; 32]);
            prop_assert_ne!(root_from_path(&leaves[i], i as u32, size as u32, &longer), root);
            if !path.is_empty() {
                let shorter = &path[..path.len() - 1];
                prop_assert_ne!(root_from_path(&leaves[i], i as u32, size as u32, shorter), root);
                let mut changed = path.clone();
                changed[flip % path.len()][flip / 8 % 32] ^= 1 << (flip % 8);
                prop_assert_ne!(root_from_path(&leaves[i], i as u32, size as u32, &changed), root);
            }
            let mut leaf = leaves[i];
            leaf[flip / 8] ^= 1 << (flip % 8);
            prop_assert_ne!(root_from_path(&leaf, i as u32, size as u32, &path), root);
        }
    }
}
