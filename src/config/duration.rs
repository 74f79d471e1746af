//! Durations in config: humantime strings (`"10s"`, `"250ms"`) or a number of seconds.
//!
//! May use: serde, humantime.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Float(f64),
    Text(String),
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(secs) => Ok(Duration::from_secs(secs)),
        Raw::Float(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| de::Error::custom("a duration must be a non-negative number of seconds")),
        Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            de::Error::custom(format!("`{t}` is not a duration like \"10s\" or \"250ms\": {e}"))
        }),
    }
}
