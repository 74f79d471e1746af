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

/// The topics a set of scopes may read, sorted and without duplicates.
pub fn read_topics(scopes: &[Scope]) -> Vec<Topic> {
    let mut topics: Vec<Topic> = scopes.iter().filter_map(|s| s.read_topic()).collect();
    topics.sort_by_key(|t| t.as_str());
    topics.dedup();
    topics
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
        let t = read_topics(&[
            Scope::TasksRead,
            Scope::AgentsRead,
            Scope::TeamsWrite,
            Scope::AgentsRead,
        ]);
        assert_eq!(t, vec![Topic::Agents, Topic::Tasks]);
        assert!(read_topics(&[Scope::TasksWrite]).is_empty());
    }

    #[test]
    fn environment_round_trips() {
        assert_eq!("live".parse::<Environment>().unwrap(), Environment::Live);
        assert!("prod".parse::<Environment>().is_err());
        assert_eq!(serde_json::to_string(&Environment::Test).unwrap(), "\"test\"");
    }
}
