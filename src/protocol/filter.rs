//! Event-name filters for `subscribe {"events": [...]}`: exact names, or a trailing `*`
//! that matches one dot-separated segment or more (`task.*` matches `task.completed`).
//!
//! Owns: pattern syntax and matching.  May use: std.  Never: I/O, allocation when matching.

/// The most patterns one `subscribe` may carry (each event is matched against all of them).
pub const MAX_PATTERNS: usize = 32;

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Box<str>),
    /// Everything before the `*`, including the trailing dot (empty for a lone `*`).
    Prefix(Box<str>),
}

/// A set of patterns; an event matches when any pattern does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Box<[Pattern]>);

/// A pattern the filter syntax does not allow; holds the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event pattern `{0}`: use names like `task.completed` or `task.*` (`*` only as the last segment)")]
pub struct InvalidPattern(pub String);

impl EventFilter {
    /// Parses patterns; an empty list, an empty segment or a `*` not alone at the end is an error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, InvalidPattern> {
        if patterns.is_empty() {
            return Err(InvalidPattern(String::new()));
        }
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref();
            let bad = || InvalidPattern(p.to_owned());
            if p.is_empty() || p.len() > 256 {
                return Err(bad());
            }
            let segments: Vec<&str> = p.split('.').collect();
            let (last, init) = segments.split_last().ok_or_else(bad)?;
            if init.iter().any(|s| s.is_empty() || s.contains('*')) || last.is_empty() {
                return Err(bad());
            }
            if *last == "*" {
                out.push(Pattern::Prefix(p[..p.len() - 1].into()));
            } else if last.contains('*') {
                return Err(bad());
            } else {
                out.push(Pattern::Exact(p.into()));
            }
        }
        Ok(Self(out.into_boxed_slice()))
    }

    pub fn matches(&self, event: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::Exact(e) => **e == *event,
            Pattern::Prefix(prefix) => event.len() > prefix.len() && event.starts_with(&**prefix),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_star_matches_one_or_more_segments() {
        let f = EventFilter::parse(&["task.*"]).unwrap();
        assert!(f.matches("task.completed"));
        assert!(f.matches("task.step.done"));
        assert!(!f.matches("task"));
        assert!(!f.matches("task."));
        assert!(!f.matches("tasks.completed"));
        assert!(!f.matches("agent.started"));
    }

    #[test]
    fn exact_names_and_lone_star() {
        let f = EventFilter::parse(&["agent.started", "task.done"]).unwrap();
        assert!(
            f.matches("agent.started") && f.matches("task.done") && !f.matches("agent.stopped")
        );
        assert!(EventFilter::parse(&["*"]).unwrap().matches("anything.at.all"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for p in ["", "task.*.done", "ta*", "task..x", ".task", "task.", "*x"] {
            assert_eq!(EventFilter::parse(&[p]), Err(InvalidPattern(p.to_owned())), "{p}");
        }
        assert!(EventFilter::parse::<&str>(&[]).is_err());
    }
}
