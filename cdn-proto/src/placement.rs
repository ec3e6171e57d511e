//! Rendezvous (highest-random-weight) hashing.
//!
//! Each node's score for a key is the first 8 bytes of `blake3(node_id || 0x00 || key)`, read
//! little-endian; the R highest scores own the key. Every member computes the same owners from
//! the same member list, and removing a node moves only the keys that node owned. The golden
//! vectors in the tests pin the function: changing it would make two versions disagree.

/// The score of `node_id` for `key`; higher wins.
pub fn score(key: &[u8], node_id: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(node_id.as_bytes());
    h.update(&[0]);
    h.update(key);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The indices into `nodes` of the `r` owners of `key`, best first.
///
/// `id` extracts a node's identity. Ties (equal scores) are broken by the id so the order is
/// total and the same on every member.
pub fn owners<T>(key: &[u8], nodes: &[T], r: usize, id: impl Fn(&T) -> &str) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(key, id(n)), i))
        .collect();
    scored.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| id(&nodes[a.1]).cmp(id(&nodes[b.1])))
    });
    scored.into_iter().take(r).map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn golden_vectors() {
        // Computed once and frozen: if these change, mixed versions would disagree on owners.
        assert_eq!(score(b"/index.html", "node-0"), GOLDEN[0]);
        assert_eq!(score(b"/index.html", "node-1"), GOLDEN[1]);
        assert_eq!(score(b"", "a"), GOLDEN[2]);
        let nodes = ids(3);
        assert_eq!(
            owners(b"/index.html", &nodes, 3, |s| s),
            GOLDEN_ORDER.to_vec()
        );
    }

    const GOLDEN: [u64; 3] = [
        0xf5fc_dbdc_c184_51a0,
        0xff4e_77f4_919d_5e13,
        0xdc1d_890c_76f2_b57e,
    ];
    const GOLDEN_ORDER: [usize; 3] = [1, 0, 2];

    #[test]
    fn spread_is_even_over_three_nodes() {
        let nodes = ids(3);
        let mut counts = [0usize; 3];
        for k in 0..10_000 {
            let key = format!("/obj/{k}");
            counts[owners(key.as_bytes(), &nodes, 1, |s| s)[0]] += 1;
        }
        let third = 10_000.0 / 3.0;
        for c in counts {
            assert!((c as f64 - third).abs() / third < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn five_nodes_share_100k_keys_evenly_and_a_sixth_takes_a_sixth() {
        let five = ids(5);
        let six = ids(6);
        let mut counts = [0usize; 5];
        let (mut moved, mut between_old) = (0usize, 0usize);
        let n = 100_000;
        for k in 0..n {
            let key = format!("/k/{k}");
            let before = owners(key.as_bytes(), &five, 1, |s| s)[0];
            counts[before] += 1;
            let after = owners(key.as_bytes(), &six, 1, |s| s)[0];
            if six[after] != five[before] {
                moved += 1;
                if six[after] != "node-5" {
                    between_old += 1;
                }
            }
        }
        let fifth = n as f64 / 5.0;
        for c in counts {
            assert!((c as f64 - fifth).abs() / fifth < 0.05, "{counts:?}");
        }
        let share = moved as f64 / n as f64;
        assert!((0.14..=0.20).contains(&share), "moved {share}");
        assert_eq!(between_old, 0, "keys only move to the new node");
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = ids(4);
        let fewer: Vec<String> = all.iter().filter(|s| *s != "node-2").cloned().collect();
        for k in 0..5_000 {
            let key = format!("/k/{k}");
            let before = &all[owners(key.as_bytes(), &all, 1, |s| s)[0]];
            let after = &fewer[owners(key.as_bytes(), &fewer, 1, |s| s)[0]];
            if before != "node-2" {
                assert_eq!(before, after, "key {key} moved between surviving nodes");
            }
        }
    }

    #[test]
    fn replicas_are_distinct_and_r_is_capped() {
        let nodes = ids(3);
        let o = owners(b"/x", &nodes, 2, |s| s);
        assert_eq!(o.len(), 2);
        assert_ne!(o[0], o[1]);
        assert_eq!(owners(b"/x", &nodes, 5, |s| s).len(), 3);
        assert!(owners(b"/x", &Vec::<String>::new(), 2, |s| s).is_empty());
    }

    #[test]
    fn order_does_not_depend_on_member_list_order() {
        let a = ids(5);
        let mut b = a.clone();
        b.reverse();
        for k in 0..500 {
            let key = format!("/o/{k}");
            let oa: Vec<&String> = owners(key.as_bytes(), &a, 2, |s| s)
                .into_iter()
                .map(|i| &a[i])
                .collect();
            let ob: Vec<&String> = owners(key.as_bytes(), &b, 2, |s| s)
                .into_iter()
                .map(|i| &b[i])
                .collect();
            assert_eq!(oa, ob);
        }
    }
}
