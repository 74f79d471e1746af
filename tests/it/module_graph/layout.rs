//! The layout table of docs/ARCHITECTURE.md §4 as layers, the node each module belongs to,
//! what a "May use:" text names, and the cycles of a graph.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use super::{
    imports::{join, Module},
    module_of,
};

/// `src/keys/service.rs  L2 …` → (`keys::service`, 2), for every line of the §4 block.
pub fn layers(doc: &str) -> BTreeMap<String, u8> {
    let section = doc.split("## 4.").nth(1).expect("ARCHITECTURE.md has a section 4");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    for line in section.lines() {
        let mut words = line.split_whitespace();
        let (Some(path), Some(layer)) = (words.next(), words.next()) else { continue };
        let Some(path) = path.strip_prefix("src/") else { continue };
        let Some(n) = layer.strip_prefix('L').and_then(|n| n.parse().ok()) else { continue };
        let module = module_of(Path::new(path.trim_end_matches('/')));
        out.insert(join(&module), n);
    }
    out
}

pub struct Graph {
    pub layers: BTreeMap<String, u8>,
}

impl Graph {
    /// The layer of a module: that of its longest listed prefix, else (a directory the table
    /// lists only by its children, like `ws/`) the one layer all listed modules under its
    /// top-level module share.
    pub fn layer(&self, m: &[String]) -> Option<u8> {
        if let Some(n) = (1..=m.len()).rev().find_map(|k| self.layers.get(&join(&m[..k]))) {
            return Some(*n);
        }
        let prefix = format!("{}::", m.first()?);
        let below: BTreeSet<u8> =
            self.layers.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, n)| *n).collect();
        (below.len() == 1).then(|| *below.iter().next().unwrap())
    }

    /// The node a module belongs to (see the module doc).
    pub fn node(&self, m: &[String]) -> String {
        let mut node = m[..1].to_vec();
        for k in 2..=m.len() {
            let listed = self.layers.get(&join(&m[..k]));
            if listed.is_some() && listed.copied() != self.layer(&node) {
                node = m[..k].to_vec();
            }
        }
        join(&node)
    }
}

/// The crate modules a "May use" text names: `keys`, `keys::service`, `auth's`, `L0–L2`
/// (every module of those layers), `everything`; words that name no crate module (external
/// crates, prose) are ignored. Parenthesised detail is ignored.
pub fn listed(text: &str, modules: &BTreeSet<String>, g: &Graph) -> Vec<String> {
    let mut plain = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for word in plain.split(|c: char| c.is_whitespace() || ",;.`".contains(c)) {
        let word = word.trim_end_matches("'s");
        if word == "everything" {
            out.push(String::new());
        } else if let Some((lo, hi)) = word.split_once(['–', '-']).and_then(|(a, b)| {
            Some((a.strip_prefix('L')?.parse::<u8>().ok()?, b.strip_prefix('L')?.parse().ok()?))
        }) {
            let split = |m: &String| m.split("::").map(str::to_owned).collect::<Module>();
            out.extend(
                modules
                    .iter()
                    .filter(|m| g.layer(&split(m)).is_some_and(|n| (lo..=hi).contains(&n)))
                    .cloned(),
            );
        } else if modules.contains(word) {
            out.push(word.to_owned());
        }
    }
    out
}

pub fn covers(entry: &str, target: &str) -> bool {
    entry.is_empty() || target == entry || target.starts_with(&format!("{entry}::"))
}

/// Strongly connected components with more than one node (Tarjan).
pub fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, (n, n));
        t.stack.push(v);
        for w in t.edges.get(v).into_iter().flatten() {
            match t.index.get(w.as_str()).copied() {
                None => {
                    visit(t, w);
                    let low = t.index[w.as_str()].1.min(t.index[v].1);
                    t.index.get_mut(v).unwrap().1 = low;
                }
                Some((wi, _)) if t.stack.contains(&w.as_str()) => {
                    let low = wi.min(t.index[v].1);
                    t.index.get_mut(v).unwrap().1 = low;
                }
                Some(_) => {}
            }
        }
        if t.index[v].0 == t.index[v].1 {
            let at = t.stack.iter().position(|x| *x == v).unwrap();
            let scc: Vec<String> = t.stack.drain(at..).map(str::to_owned).collect();
            if scc.len() > 1 {
                t.out.push(scc);
            }
        }
    }
    let mut t = T { edges, index: BTreeMap::new(), stack: Vec::new(), out: Vec::new() };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}
