//! Dependency graph: start levels (Kahn) and exact cycle reporting. Pure.

/// `deps[i]` lists the nodes `i` depends on (must start before `i`).
/// Returns the nodes grouped by level (level 0 has no dependencies), or one cycle as a
/// path `a -> b -> … -> a` (node indices, first repeated at the end).
pub fn levels(deps: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let n = deps.len();
    let mut level = vec![usize::MAX; n];
    let mut remaining: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut frontier: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    let mut out = Vec::new();
    let mut placed = 0;
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for &i in &frontier {
            level[i] = out.len();
            placed += 1;
            for &j in &dependents[i] {
                remaining[j] -= 1;
                if remaining[j] == 0 {
                    next.push(j);
                }
            }
        }
        frontier.sort_unstable();
        out.push(std::mem::take(&mut frontier));
        frontier = next;
    }
    if placed == n {
        return Ok(out);
    }
    Err(find_cycle(deps, &level))
}

/// Walks dependencies among unplaced nodes until a node repeats; every unplaced node has an
/// unplaced dependency, so the walk must close a cycle.
fn find_cycle(deps: &[Vec<usize>], level: &[usize]) -> Vec<usize> {
    let start = (0..deps.len()).find(|&i| level[i] == usize::MAX).unwrap();
    let mut path = vec![start];
    let mut seen = vec![usize::MAX; deps.len()];
    seen[start] = 0;
    let mut cur = start;
    loop {
        let next = *deps[cur]
            .iter()
            .filter(|&&d| level[d] == usize::MAX)
            .min()
            .expect("unplaced node has an unplaced dependency");
        if seen[next] != usize::MAX {
            let mut cycle = path[seen[next]..].to_vec();
            cycle.push(next);
            return cycle;
        }
        seen[next] = path.len();
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_levels() {
        // 0 <- 1 <- 3, 0 <- 2
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        assert_eq!(levels(&deps).unwrap(), vec![vec![0], vec![1, 2], vec![3]]);
    }

    #[test]
    fn reports_exact_cycle() {
        // 0 -> 1 -> 2 -> 1, 3 independent
        let deps = vec![vec![1], vec![2], vec![1], vec![]];
        assert_eq!(levels(&deps).unwrap_err(), vec![1, 2, 1]);
        assert_eq!(levels(&[vec![0]]).unwrap_err(), vec![0, 0]);
    }

    proptest! {
        #[test]
        fn dag_levels_respect_every_edge(n in 1usize..30, edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80)) {
            // Only edges from higher to lower index: always acyclic.
            let mut deps = vec![Vec::new(); n];
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b { deps[a].push(b); }
            }
            let lv = levels(&deps).unwrap();
            let mut at = vec![0; n];
            let mut count = 0;
            for (l, nodes) in lv.iter().enumerate() { for &i in nodes { at[i] = l; count += 1; } }
            prop_assert_eq!(count, n);
            for (i, ds) in deps.iter().enumerate() { for &d in ds { prop_assert!(at[d] < at[i]); } }
        }

        #[test]
        fn back_edge_yields_cycle(n in 2usize..20, back_from in 0usize..20) {
            // A chain i -> i-1 plus one back edge 0 -> k closes the cycle 0 -> k -> k-1 -> ... -> 0.
            let k = 1 + back_from % (n - 1);
            let mut deps: Vec<Vec<usize>> = (0..n).map(|i| if i == 0 { vec![] } else { vec![i - 1] }).collect();
            deps[0].push(k);
            let cycle = levels(&deps).unwrap_err();
            prop_assert_eq!(cycle.first(), cycle.last());
            let mut expect: Vec<usize> = (0..=k).rev().collect();
            expect.push(k);
            // The walk starts at the lowest unplaced node (0) and follows 0 -> k -> ... -> 0.
            let mut from_zero = vec![0];
            from_zero.extend((1..=k).rev());
            from_zero.push(0);
            prop_assert!(cycle == from_zero || cycle == expect, "{:?}", cycle);
            for w in cycle.windows(2) { prop_assert!(deps[w[0]].contains(&w[1])); }
        }
    }
}
