//! Environments, the 17 scopes and the 9 topics of SPEC §1–§2, with strict parsing.
//!
//! Owns: the closed sets of names.  May use: serde.  Never: I/O.
//! Invariants: an unknown scope or topic is an error, never dropped; no scope implies another.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `live` (production) or `test` (sandbox); fixed per key by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "live" => Ok(Environment::Live),
            "test" => Ok(Environment::Test),
            _ => Err(UnknownName(s.to_owned())),
        }
    }
}

/// A name that is not in the closed set it was parsed against; holds the offending name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name `{0}`")]
pub struct UnknownName(pub String);

/// Declares a string enum with `as_str`, `ALL`, `FromStr`, `Display` and string serde.
macro_rules! name_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(UnknownName(s.to_owned())) }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_enum! {
    /// One of the nine readable resources; on the wire it is called a "channel".
    Topic {
        Tasks = "tasks", Agents = "agents", Workspaces = "workspaces", Billing = "billing",
        Teams = "teams", Integrations = "integrations", Trading = "trading",
        Social = "social", Commerce = "commerce",
    }
}

name_enum! {
    /// A permission, `<resource>.<read|write>`: exactly the 17 of SPEC §2.
    Scope {
        TasksRead = "tasks.read", TasksWrite = "tasks.write",
        AgentsRead = "agents.read", AgentsWrite = "agents.write",
        WorkspacesRead = "workspaces.read", WorkspacesWrite = "workspaces.write",
        BillingRead = "billing.read",
        TeamsRead = "teams.read", TeamsWrite = "teams.write",
        IntegrationsRead = "integrations.read", IntegrationsWrite = "integrations.write",
        TradingRead = "trading.read", TradingWrite = "trading.write",
        SocialRead = "social.read", SocialWrite = "social.write",
        CommerceRead = "commerce.read", CommerceWrite = "commerce.write",
    }
}

impl Scope {
    /// The topic this scope lets a connection read, if it is a `*.read` scope.
    pub fn read_topic(self) -> Option<Topic> {
        let (resource, action) = self.as_str().split_once('.')?;
        if action != "read" {
            return None;
        }
        resource.parse().ok()
    }
}

impl Topic {
    /// The scope that allows reading this topic.
    pub fn read_scope(self) -> Scope {
        Scope::ALL
            .iter()
            .copied()
            .find(|s| s.read_topic() == Some(self))
            .unwrap_or(Scope::TasksRead) // every topic has a read scope (tested below)
    }
}

/// A set of scopes as a bitmask (17 bits): copied, never allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(u32);

impl ScopeSet {
    /// Every scope.
    pub const ALL: ScopeSet = ScopeSet((1 << 17) - 1);

    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |bits, s| bits | 1 << (*s as u32)))
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & 1 << (s as u32) != 0
    }

    /// The scopes in both sets.
    pub fn intersect(self, other: ScopeSet) -> Self {
        Self(self.0 & other.0)
    }

    /// The scopes of the set, in `Scope::ALL` order.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL.iter().copied().filter(|s| self.contains(*s)).collect()
    }

    /// The topics these scopes may read.
    pub fn read_topics(self) -> TopicSet {
        Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .filter_map(|s| s.read_topic())
            .fold(TopicSet::default(), |set, t| set.with(t))
    }
}

/// A set of topics as a bitmask (9 bits); iterates in name order, as clients are shown them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicSet(u16);

impl TopicSet {
    pub fn with(self, t: Topic) -> Self {
        Self(self.0 | 1 << (t as u16))
    }

    pub fn without(self, t: Topic) -> Self {
        Self(self.0 & !(1 << (t as u16)))
    }

    pub fn contains(self, t: Topic) -> bool {
        self.0 & 1 << (t as u16) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The topics of `self` that are not in `other`.
    pub fn minus(self, other: TopicSet) -> Self {
        Self(self.0 & !other.0)
    }

    /// The topics of both sets.
    pub fn intersect(self, other: TopicSet) -> Self {
        Self(self.0 & other.0)
    }

    /// The topics, sorted by name.
    pub fn iter(self) -> impl Iterator<Item = Topic> {
        const BY_NAME: [Topic; 9] = [
            Topic::Agents,
            Topic::Billing,
            Topic::Commerce,
            Topic::Integrations,
            Topic::Social,
            Topic::Tasks,
            Topic::Teams,
            Topic::Trading,
            Topic::Workspaces,
        ];
        BY_NAME.into_iter().filter(move |t| self.contains(*t))
    }

    pub fn to_vec(self) -> Vec<Topic> {
        self.iter().collect()
    }
}

/// The topics a stream loses when its key's scopes change from `old` to `new` (SPEC §8):
/// the topics `old` may read and `new` may not. Granted topics are never in it.
pub fn removed_topics(old: ScopeSet, new: ScopeSet) -> TopicSet {
    old.read_topics().minus(new.read_topics())
}

/// Parses a list of scope names strictly: the first unknown one is the error.
pub fn parse_scopes<S: AsRef<str>>(names: &[S]) -> Result<Vec<Scope>, UnknownName> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let s: Scope = n.as_ref().parse()?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_17_scopes_and_9_topics_each_with_a_read_scope() {
        assert_eq!(Scope::ALL.len(), 17);
        assert_eq!(Topic::ALL.len(), 9);
        for t in Topic::ALL {
            assert_eq!(t.read_scope().read_topic(), Some(*t));
        }
        assert_eq!(Scope::ALL.iter().filter(|s| s.read_topic().is_some()).count(), 9);
    }

    #[test]
    fn unknown_scope_is_an_error_naming_it() {
        assert_eq!(
            parse_scopes(&["tasks.read", "tasks.admin"]),
            Err(UnknownName("tasks.admin".into()))
        );
        assert!(serde_json::from_str::<Scope>("\"billing.write\"").is_err());
        assert_eq!(parse_scopes(&["tasks.read", "tasks.read"]).unwrap(), vec![Scope::TasksRead]);
    }

    #[test]
    fn read_topics_are_sorted_and_ignore_write_scopes() {
        let t = ScopeSet::of(&[
            Scope::TasksRead,
            Scope::AgentsRead,
            Scope::TeamsWrite,
            Scope::AgentsRead,
        ])
        .read_topics();
        assert_eq!(t.to_vec(), vec![Topic::Agents, Topic::Tasks]);
        assert!(ScopeSet::of(&[Scope::TasksWrite]).read_topics().is_empty());
    }

    #[test]
    fn bitsets_match_the_vector_forms() {
        let scopes = [Scope::TasksRead, Scope::AgentsRead, Scope::TeamsWrite, Scope::CommerceRead];
        let set = ScopeSet::of(&scopes);
        assert!(Scope::ALL.iter().all(|s| set.contains(*s) == scopes.contains(s)));
        assert_eq!(set.read_topics().to_vec(), vec![Topic::Agents, Topic::Commerce, Topic::Tasks]);
        let all = ScopeSet::of(Scope::ALL).read_topics().to_vec();
        let mut sorted = Topic::ALL.to_vec();
        sorted.sort_by_key(|t| t.as_str());
        assert_eq!(all, sorted, "iteration is in name order");
        let t = TopicSet::default().with(Topic::Tasks).with(Topic::Agents).without(Topic::Tasks);
        assert_eq!(t.to_vec(), vec![Topic::Agents]);
        assert!(TopicSet::default().is_empty());
    }

    #[test]
    fn environment_round_trips() {
        assert_eq!("live".parse::<Environment>().unwrap(), Environment::Live);
        assert!("prod".parse::<Environment>().is_err());
        assert_eq!(serde_json::to_string(&Environment::Test).unwrap(), "\"test\"");
    }

    /// The model: topics named by the `<topic>.read` strings in `old` but not in `new`.
    fn model_removed(old: &[Scope], new: &[Scope]) -> Vec<String> {
        let reads = |set: &[Scope]| -> std::collections::BTreeSet<String> {
            set.iter().filter_map(|s| s.as_str().strip_suffix(".read")).map(str::to_owned).collect()
        };
        reads(old).difference(&reads(new)).cloned().collect()
    }

    fn subset(mask: u32) -> Vec<Scope> {
        Scope::ALL.iter().enumerate().filter(|(i, _)| mask & 1 << i != 0).map(|(_, s)| *s).collect()
    }

    fn names(t: TopicSet) -> Vec<String> {
        t.iter().map(|t| t.as_str().to_owned()).collect()
    }

    #[test]
    fn removed_topics_for_every_pair_of_read_scope_sets() {
        // The removed topics depend only on the 9 read scopes: all 512 × 512 pairs.
        let reads: Vec<Scope> =
            Scope::ALL.iter().copied().filter(|s| s.read_topic().is_some()).collect();
        let pick = |mask: u32| -> Vec<Scope> {
            reads.iter().enumerate().filter(|(i, _)| mask & 1 << i != 0).map(|(_, s)| *s).collect()
        };
        for a in 0..512u32 {
            let old = pick(a);
            for b in 0..512u32 {
                let new = pick(b);
                let got = removed_topics(ScopeSet::of(&old), ScopeSet::of(&new));
                assert_eq!(names(got), model_removed(&old, &new), "{old:?} -> {new:?}");
            }
        }
        assert_eq!(ScopeSet::ALL, ScopeSet::of(Scope::ALL));
    }

    proptest::proptest! {
        #[test]
        fn removed_topics_are_old_read_topics_minus_new_ones(a in 0u32..1 << 17, b in 0u32..1 << 17) {
            let (old, new) = (subset(a), subset(b));
            let got = removed_topics(ScopeSet::of(&old), ScopeSet::of(&new));
            proptest::prop_assert_eq!(names(got), model_removed(&old, &new));
            // Nothing removed is readable afterwards; nothing granted is in it.
            let now = ScopeSet::of(&new).read_topics();
            proptest::prop_assert!(got.intersect(now).is_empty());
            proptest::prop_assert_eq!(got.minus(ScopeSet::of(&old).read_topics()), TopicSet::default());
        }
    }
}
