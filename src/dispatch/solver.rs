//! The exact assignment behind `batch` and `stacked`.
//!
//! Input: rows (orders), columns (riders) and the candidate edges between them, each with a
//! non-negative integer cost. Output: a matching that first assigns as many rows as possible
//! and then, among those matchings, has the least total cost. Both solvers reach that optimum;
//! `tests/dispatch_policy.rs` checks them against brute force.
//!
//! The lexicographic objective is one min-cost problem: every row also gets a private "stay
//! unassigned" column of cost `F = (max edge cost + 1) * (min(rows, cols) + 1)`. Two matchings
//! that differ by one assigned row differ by `F` minus a real-cost difference of at most
//! `min(rows, cols) * max cost < F`, so fewer rows on `F` always wins.
//!
//! - [`Solver::Sparse`]: successive shortest augmenting paths (the Hungarian method in its
//!   Jonker–Volgenant / Dijkstra form) over the candidate edges only. Row by row, Dijkstra on
//!   reduced costs finds the cheapest augmenting path and stops at the first free column, so an
//!   uncontested order costs a few heap operations.
//! - [`Solver::KuhnMunkres`]: `pathfinding::kuhn_munkres_min` on a dense matrix per connected
//!   component of the candidate graph (non-edges cost `F`, which the optimum never uses where
//!   a real edge can serve).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

use super::settings::Solver;

/// Costs above this are clamped (about eleven days in ms), so sums never overflow.
pub const MAX_COST: i64 = 1_000_000_000;

/// A candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// Row (order) index.
    pub row: usize,
    /// Column (rider) index.
    pub col: usize,
    /// Cost, >= 0 (clamped into `0..=MAX_COST`).
    pub cost: i64,
}

const NONE: usize = usize::MAX;

/// The optimal matching as (row, column) pairs, sorted by row. Edges naming a row or column out
/// of range are ignored.
pub fn assign(rows: usize, cols: usize, edges: &[Edge], solver: Solver) -> Vec<(usize, usize)> {
    let edges: Vec<Edge> = edges
        .iter()
        .filter(|e| e.row < rows && e.col < cols)
        .map(|e| Edge {
            cost: e.cost.clamp(0, MAX_COST),
            ..*e
        })
        .collect();
    if edges.is_empty() {
        return Vec::new();
    }
    let mut out = match solver {
        Solver::Sparse => sparse(rows, cols, &edges),
        Solver::KuhnMunkres => dense_by_component(rows, cols, &edges),
    };
    out.sort_unstable();
    out
}

/// The cost of staying unassigned for a problem of this size.
fn unassigned_cost(edges: &[Edge], rows: usize, cols: usize) -> Option<i64> {
    let max = edges.iter().map(|e| e.cost).max().unwrap_or(0);
    let side = i64::try_from(rows.min(cols)).ok()?;
    (max + 1).checked_mul(side + 1)
}

/// Successive shortest augmenting paths over the sparse graph.
fn sparse(rows: usize, cols: usize, edges: &[Edge]) -> Vec<(usize, usize)> {
    let Some(big) = unassigned_cost(edges, rows, cols) else {
        return Vec::new();
    };
    let mut adj: Vec<Vec<(usize, i64)>> = vec![Vec::new(); rows];
    for e in edges {
        adj[e.row].push((e.col, e.cost));
    }
    // Column `cols + r` is row r's private "unassigned" column, cost `big`.
    let ncols = cols + rows;
    let mut s = Sparse {
        adj,
        cols,
        big,
        u: vec![0; rows],
        v: vec![0; ncols],
        col_row: vec![NONE; ncols],
        row_col: vec![NONE; rows],
        dist: vec![i64::MAX; ncols],
        prev: vec![NONE; ncols],
        done: vec![false; ncols],
        touched: Vec::new(),
        finalized: Vec::new(),
        heap: BinaryHeap::new(),
    };
    for root in 0..rows {
        if !s.adj[root].is_empty() {
            s.augment(root);
        }
    }
    s.row_col
        .iter()
        .enumerate()
        .filter(|(_, &j)| j < cols)
        .map(|(i, &j)| (i, j))
        .collect()
}

/// The state of the sparse solver. Reduced cost of an edge: `c(i, j) - u[i] - v[j] >= 0`,
/// 0 on matched edges.
struct Sparse {
    /// Candidate edges of each row: (column, cost).
    adj: Vec<Vec<(usize, i64)>>,
    /// Real columns; `cols + r` is row r's unassigned column.
    cols: usize,
    /// Cost of the unassigned columns.
    big: i64,
    /// Row potentials.
    u: Vec<i64>,
    /// Column potentials.
    v: Vec<i64>,
    /// Matched row of each column.
    col_row: Vec<usize>,
    /// Matched column of each row.
    row_col: Vec<usize>,
    /// Dijkstra: shortest reduced distance to each column in this search.
    dist: Vec<i64>,
    /// Dijkstra: the row each column was reached from.
    prev: Vec<usize>,
    /// Dijkstra: the column's distance is final.
    done: Vec<bool>,
    /// Columns whose search state must be reset.
    touched: Vec<usize>,
    /// Columns finalized in this search, in order.
    finalized: Vec<usize>,
    /// Dijkstra's queue.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Sparse {
    /// Relaxes every edge of row `i`, reached at reduced distance `base`.
    fn relax(&mut self, i: usize, base: i64) {
        let own = (self.cols + i, self.big);
        for &(j, c) in self.adj[i].iter().chain(std::iter::once(&own)) {
            if self.done[j] {
                continue;
            }
            let nd = base + c - self.u[i] - self.v[j];
            if nd < self.dist[j] {
                if self.dist[j] == i64::MAX {
                    self.touched.push(j);
                }
                self.dist[j] = nd;
                self.prev[j] = i;
                self.heap.push(Reverse((nd, j)));
            }
        }
    }

    /// Matches `root` along the cheapest augmenting path.
    fn augment(&mut self, root: usize) {
        // Dual feasibility for the root's edges: u[root] = its least reduced cost.
        let own = self.big - self.v[self.cols + root];
        self.u[root] = self.adj[root]
            .iter()
            .map(|&(j, c)| c - self.v[j])
            .fold(own, i64::min);
        self.relax(root, 0);
        let mut end = NONE;
        let mut reach = 0;
        while let Some(Reverse((d, j))) = self.heap.pop() {
            if self.done[j] || d > self.dist[j] {
                continue;
            }
            self.done[j] = true;
            self.finalized.push(j);
            let i = self.col_row[j];
            if i == NONE {
                end = j;
                reach = d;
                break;
            }
            self.relax(i, d);
        }
        // `end` is always found: the root's own unassigned column is free.
        if end != NONE {
            // Finalized columns move by (reach - dist) and their rows follow, the root by the
            // whole path: reduced costs stay >= 0 and the path's new matched edges are tight.
            for k in 0..self.finalized.len() {
                let j = self.finalized[k];
                let delta = reach - self.dist[j];
                self.v[j] -= delta;
                let i = self.col_row[j];
                if j != end && i != NONE {
                    self.u[i] += delta;
                }
            }
            self.u[root] += reach;
            let mut j = end;
            loop {
                let i = self.prev[j];
                let next = self.row_col[i];
                self.row_col[i] = j;
                self.col_row[j] = i;
                if i == root {
                    break;
                }
                j = next;
            }
        }
        for &j in &self.touched {
            self.dist[j] = i64::MAX;
            self.done[j] = false;
            self.prev[j] = NONE;
        }
        self.touched.clear();
        self.finalized.clear();
        self.heap.clear();
    }
}

/// Union-find root with path halving.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// `kuhn_munkres_min` on each connected component's dense matrix.
fn dense_by_component(rows: usize, cols: usize, edges: &[Edge]) -> Vec<(usize, usize)> {
    // Nodes: rows 0..rows, columns rows..rows+cols.
    let mut parent: Vec<usize> = (0..rows + cols).collect();
    for e in edges {
        let (a, b) = (find(&mut parent, e.row), find(&mut parent, rows + e.col));
        if a != b {
            parent[a] = b;
        }
    }
    let mut comp_of: Vec<usize> = vec![NONE; rows + cols];
    let mut comps: Vec<(Vec<usize>, Vec<usize>, Vec<Edge>)> = Vec::new();
    for e in edges {
        let root = find(&mut parent, e.row);
        if comp_of[root] == NONE {
            comp_of[root] = comps.len();
            comps.push((Vec::new(), Vec::new(), Vec::new()));
        }
        comps[comp_of[root]].2.push(*e);
    }
    let mut out = Vec::new();
    for (mut rs, mut cs, es) in comps {
        rs.extend(es.iter().map(|e| e.row));
        cs.extend(es.iter().map(|e| e.col));
        rs.sort_unstable();
        rs.dedup();
        cs.sort_unstable();
        cs.dedup();
        out.extend(dense(&rs, &cs, &es));
    }
    out
}

/// One component: rows `rs`, columns `cs`, edges among them.
fn dense(rs: &[usize], cs: &[usize], es: &[Edge]) -> Vec<(usize, usize)> {
    let (n, m) = (rs.len(), cs.len());
    let local: Vec<Edge> = es
        .iter()
        .filter_map(|e| {
            Some(Edge {
                row: rs.binary_search(&e.row).ok()?,
                col: cs.binary_search(&e.col).ok()?,
                cost: e.cost,
            })
        })
        .collect();
    let big = unassigned_cost(&local, n, m);
    let fits = big.and_then(|b| b.checked_mul(i64::try_from(n.max(m)).ok()? + 1));
    let (Some(big), Some(_)) = (big, fits) else {
        // Too large for i64 sums in the dense form: the sparse solver has no such sums.
        return sparse(n, m, &local)
            .into_iter()
            .map(|(i, j)| (rs[i], cs[j]))
            .collect();
    };
    let transpose = n > m;
    let (r, c) = if transpose { (m, n) } else { (n, m) };
    let mut w = Matrix::new(r, c, big);
    for e in &local {
        let (i, j) = if transpose {
            (e.col, e.row)
        } else {
            (e.row, e.col)
        };
        let cell = &mut w[(i, j)];
        *cell = (*cell).min(e.cost);
    }
    let (_, assignment) = kuhn_munkres_min(&w);
    assignment
        .into_iter()
        .enumerate()
        .filter(|&(i, j)| w[(i, j)] < big)
        .map(|(i, j)| {
            if transpose {
                (rs[j], cs[i])
            } else {
                (rs[i], cs[j])
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(row: usize, col: usize, cost: i64) -> Edge {
        Edge { row, col, cost }
    }

    #[test]
    fn prefers_more_assignments_over_lower_cost() {
        // Row 0 alone would take column 0 (cost 1); taking column 1 (cost 100) lets row 1 in.
        let edges = [e(0, 0, 1), e(0, 1, 100), e(1, 0, 1)];
        for s in [Solver::Sparse, Solver::KuhnMunkres] {
            assert_eq!(assign(2, 2, &edges, s), vec![(0, 1), (1, 0)], "{s:?}");
        }
    }

    #[test]
    fn swaps_to_the_cheaper_total() {
        // Greedy row 0 -> col 0 (2) forces row 1 -> col 1 (10): 12; swap is 3 + 3 = 6.
        let edges = [e(0, 0, 2), e(0, 1, 3), e(1, 0, 3), e(1, 1, 10)];
        for s in [Solver::Sparse, Solver::KuhnMunkres] {
            assert_eq!(assign(2, 2, &edges, s), vec![(0, 1), (1, 0)], "{s:?}");
        }
    }

    #[test]
    fn more_rows_than_columns_and_bad_edges() {
        let edges = [e(0, 0, 5), e(1, 0, 4), e(2, 0, 6), e(7, 0, 0), e(0, 9, 0)];
        for s in [Solver::Sparse, Solver::KuhnMunkres] {
            assert_eq!(assign(3, 1, &edges, s), vec![(1, 0)], "{s:?}");
        }
    }
}
