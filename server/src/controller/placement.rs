//! Where new partitions' replicas go: spread evenly over the usable (registered, unfenced)
//! brokers, Kafka's rack-unaware round robin. Partition `p`'s first replica (its preferred
//! leader) is broker `(start + p) % n`; the other replicas follow it at a shift that changes
//! every `n` partitions, so followers spread too. The controller picks `start` on the
//! broker that leads the fewest partitions (ties broken at random), which keeps leaders
//! even across topics as well as within one.

use crate::metadata::NodeId;

/// Replica lists for partitions `first_partition ..first_partition + count` over `brokers`
/// (sorted, no duplicates, at least `replication_factor` of them).
pub fn assign_replicas(
    brokers: &[NodeId],
    first_partition: i32,
    count: i32,
    replication_factor: usize,
    start: usize,
    shift: usize,
) -> Vec<Vec<NodeId>> {
    let n = brokers.len();
    assert!(
        n > 0 && (1..=n).contains(&replication_factor),
        "placement needs 1..={n} replicas over {n} brokers"
    );
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for p in first_partition.max(0)..first_partition.max(0) + count.max(0) {
        let p = p as usize;
        // The follower shift moves on after each full round over the brokers.
        let round_shift = shift + p / n;
        let first = (start + p) % n;
        let mut replicas = Vec::with_capacity(replication_factor);
        replicas.push(brokers[first]);
        for j in 0..replication_factor - 1 {
            let offset = 1 + (round_shift + j) % (n - 1).max(1);
            replicas.push(brokers[(first + offset) % n]);
        }
        out.push(replicas);
    }
    out
}

/// The index in `brokers` of the broker leading the fewest partitions; `tie_break` picks
/// among equals.
pub fn least_loaded(
    brokers: &[NodeId],
    leaders_of: impl Fn(NodeId) -> usize,
    tie_break: u64,
) -> usize {
    let min = brokers.iter().map(|b| leaders_of(*b)).min().unwrap_or(0);
    let ties: Vec<usize> = (0..brokers.len())
        .filter(|&i| leaders_of(brokers[i]) == min)
        .collect();
    ties.get((tie_break % ties.len().max(1) as u64) as usize)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn nodes(n: i32) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn leaders_and_replicas_spread_evenly() {
        for n in 1..=6 {
            for rf in 1..=n as usize {
                for start in 0..n as usize {
                    let placed = assign_replicas(&nodes(n), 0, 6 * n, rf, start, 1);
                    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
                    let mut replicas: BTreeMap<NodeId, usize> = BTreeMap::new();
                    for r in &placed {
                        assert_eq!(r.len(), rf);
                        let mut dedup = r.clone();
                        dedup.sort();
                        dedup.dedup();
                        assert_eq!(dedup.len(), rf, "duplicate replica in {r:?}");
                        *leaders.entry(r[0]).or_default() += 1;
                        for b in r {
                            *replicas.entry(*b).or_default() += 1;
                        }
                    }
                    assert!(leaders.values().all(|c| *c == 6), "{leaders:?}");
                    assert!(replicas.values().all(|c| *c == 6 * rf), "{replicas:?}");
                }
            }
        }
    }

    #[test]
    fn added_partitions_continue_the_round_robin() {
        let all = assign_replicas(&nodes(3), 0, 6, 1, 1, 0);
        let tail = assign_replicas(&nodes(3), 4, 2, 1, 1, 0);
        assert_eq!(&all[4..], &tail[..]);
    }

    #[test]
    fn the_least_loaded_broker_starts() {
        let brokers = nodes(3);
        let load = |n: NodeId| [0, 5, 2, 2][n.0 as usize];
        assert_eq!(least_loaded(&brokers, load, 0), 1);
        assert_eq!(least_loaded(&brokers, load, 1), 2);
        let even = |_| 4;
        assert_eq!(least_loaded(&brokers, even, 7), 1);
    }
}
