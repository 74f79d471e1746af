//! The imports of one source file, read from its tokens: `use` trees (groups, `self`, globs),
//! paths in code, in macro calls and in attributes, all starting with `crate::`, `super::` or
//! `self::` and resolved to absolute module paths (inline `mod x { … }` blocks included).
//! Comments and string literals are not tokens of the code, so they never count.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// A module path, `["keys", "service"]` for `crate::keys::service`.
pub type Module = Vec<String>;

pub fn join(m: &[String]) -> String {
    m.join("::")
}

fn is_path_sep(t: &[TokenTree], i: usize) -> bool {
    matches!((t.get(i), t.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
}

fn ident(t: Option<&TokenTree>) -> Option<String> {
    match t {
        Some(TokenTree::Ident(i)) => Some(i.to_string()),
        _ => None,
    }
}

/// Reads `seg::seg::…` from `t[i]` on, appending to `path`; a `{…}` group is a use tree.
/// Returns the index after the path.
fn read_path(t: &[TokenTree], mut i: usize, mut path: Module, out: &mut Vec<Module>) -> usize {
    loop {
        if !is_path_sep(t, i) {
            out.push(path);
            return i;
        }
        match t.get(i + 2) {
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                use_tree(g.stream(), &path, out);
                return i + 3;
            }
            Some(TokenTree::Ident(id)) => {
                path.push(id.to_string());
                i += 3;
            }
            _ => {
                out.push(path); // `…::*` or `…::<T>`
                return i + 2;
            }
        }
    }
}

/// The items of a `{a::b, c, self, d::{e}}` use group under `prefix`.
fn use_tree(stream: TokenStream, prefix: &Module, out: &mut Vec<Module>) {
    let tokens: Vec<TokenTree> = stream.into_iter().collect();
    for item in tokens.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
        match ident(item.first()) {
            Some(first) if first == "self" => out.push(prefix.clone()),
            Some(first) => {
                let mut path = prefix.clone();
                path.push(first);
                read_path(item, 1, path, out);
            }
            None => match item.first() {
                Some(TokenTree::Group(g)) => use_tree(g.stream(), prefix, out),
                _ => out.push(prefix.clone()), // `*`
            },
        }
    }
}

/// Every absolute module path the tokens name through `crate::`, `super::` or `self::`.
pub fn scan(stream: TokenStream, here: &Module, out: &mut Vec<Module>) {
    let t: Vec<TokenTree> = stream.into_iter().collect();
    let mut i = 0;
    while i < t.len() {
        let after_sep = i >= 2 && is_path_sep(&t, i - 2);
        match (&t[i], ident(t.get(i + 1))) {
            (TokenTree::Ident(kw), Some(name)) if kw == "mod" => {
                if let Some(TokenTree::Group(g)) = t.get(i + 2) {
                    let mut inner = here.clone();
                    inner.push(name);
                    scan(g.stream(), &inner, out);
                    i += 3;
                    continue;
                }
            }
            _ => {}
        }
        if let TokenTree::Group(g) = &t[i] {
            scan(g.stream(), here, out);
            i += 1;
            continue;
        }
        let base = match ident(t.get(i)).as_deref() {
            Some("crate") if !after_sep && is_path_sep(&t, i + 1) => Some(Vec::new()),
            Some("self") if !after_sep && is_path_sep(&t, i + 1) => Some(here.clone()),
            Some("super") if !after_sep && is_path_sep(&t, i + 1) => {
                let mut base = here.clone();
                base.pop();
                // `super::super::…`
                while ident(t.get(i + 3)).as_deref() == Some("super") && is_path_sep(&t, i + 4) {
                    base.pop();
                    i += 3;
                }
                Some(base)
            }
            _ => None,
        };
        i = match base {
            Some(base) => read_path(&t, i + 1, base, out),
            None => i + 1,
        };
    }
}

/// The text after "May use:" in the `//!` header, up to the next "Never:"/"Owns:"/
/// "Invariants:" or the end of the header.
pub fn may_use(source: &str) -> Option<String> {
    let header: Vec<&str> = source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect();
    let header = header.join(" ");
    let rest = header.split("May use:").nth(1)?;
    let end = ["Never:", "Owns:", "Invariants:"].iter().filter_map(|w| rest.find(w)).min();
    Some(rest[..end.unwrap_or(rest.len())].to_owned())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn imports(src: &str, here: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let here: Module = here.iter().map(|s| s.to_string()).collect();
        scan(TokenStream::from_str(src).unwrap(), &here, &mut out);
        out.iter().map(|m| join(m)).collect()
    }

    #[test]
    fn use_trees_code_paths_macros_and_attributes_are_read_and_comments_are_not() {
        let src = r#"
            //! Mentions crate::doc_only in a comment.
            use crate::{a::{b, c::D}, e, f::*, self as _};
            use super::sibling::Thing;
            pub(crate) fn f() -> crate::g::G { tracing::info!("{}", crate::h::H); "crate::s::S" }
            #[arg(value_parser = crate::i::MAX)]
            struct X;
            mod tests { use super::*; use super::super::up; }
        "#;
        let got = imports(src, &["top", "file"]);
        for want in
            ["a::b", "a::c::D", "e", "f", "", "top::sibling::Thing", "g::G", "h::H", "i::MAX"]
        {
            assert!(got.contains(&want.to_owned()), "{want:?} missing from {got:?}");
        }
        assert!(got.contains(&"top::file".to_owned()), "`use super::*` in an inline mod: {got:?}");
        assert!(
            got.contains(&"top::up".to_owned()),
            "`super::super::` from an inline mod: {got:?}"
        );
        assert!(!got.iter().any(|p| p.contains("doc_only") || p.starts_with("s::")), "{got:?}");
    }

    #[test]
    fn may_use_is_the_text_up_to_the_next_heading_word() {
        let src = "//! What it is.\n//!\n//! Owns: x.  May use: a, b::c (why),\n//! d.  Never: e.\nuse x;\n//! May use: not the header\n";
        assert_eq!(may_use(src).unwrap().trim(), "a, b::c (why), d.");
        assert_eq!(may_use("//! Nothing here.\n"), None);
    }
}
