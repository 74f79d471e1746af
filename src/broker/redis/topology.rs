//! Which master of a Redis Cluster owns a channel: the slot of a name (CRC16 of its hash tag,
//! as Redis computes it) and the slot map read with `CLUSTER SLOTS`.
//!
//! May use: the parent module (errors, timeout), redis, redis_link, crc16.
//! Never: hold a connection.

use redis::Value;

use super::{unavailable, BrokerError, COMMAND_TIMEOUT};
use crate::redis_link::{Conn, RedisLink};

/// Slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// The cluster slot of `name`: CRC16 (XMODEM) of its hash tag — the part between the first
/// `{` and the next `}`, when not empty — or of the whole name.
pub fn slot_of(name: &str) -> u16 {
    let bytes = name.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// The masters of a cluster by slot range: `(first, last, "host:port")`, sorted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    /// Reads the map through the node's cluster command connection (within
    /// `COMMAND_TIMEOUT`).
    pub async fn fetch(link: &RedisLink) -> Result<Self, BrokerError> {
        let mut conn = link.conn().await.map_err(unavailable)?;
        tokio::time::timeout(COMMAND_TIMEOUT, Self::read(&mut conn))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
    }

    /// Reads the map with `CLUSTER SLOTS`.
    async fn read(conn: &mut Conn) -> redis::RedisResult<Self> {
        let value: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
        Self::parse(value).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
        })
    }

    fn parse(value: Value) -> Option<Self> {
        let Value::Array(ranges) = value else { return None };
        let mut map = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Value::Array(fields) = range else { return None };
            let (first, last, master) = match fields.as_slice() {
                [Value::Int(a), Value::Int(b), Value::Array(m), ..] => (*a, *b, m),
                _ => return None,
            };
            let host = match master.first()? {
                Value::BulkString(h) => String::from_utf8(h.clone()).ok()?,
                Value::SimpleString(h) => h.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else { return None };
            let (first, last) = (u16::try_from(first).ok()?, u16::try_from(last).ok()?);
            map.push((first, last, format!("{host}:{port}")));
        }
        map.sort();
        Some(Self(map))
    }

    /// The master serving `slot`, if any does.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let i = self.0.partition_point(|(_, last, _)| *last < slot);
        self.0.get(i).filter(|(first, _, _)| *first <= slot).map(|(_, _, a)| a.as_str())
    }

    /// The slot ranges `addr` serves, as `0-5460` or `0-99,200-300` (empty if none).
    pub fn slots_of(&self, addr: &str) -> String {
        let ranges: Vec<String> = self
            .0
            .iter()
            .filter(|(_, _, a)| a == addr)
            .map(|(first, last, _)| format!("{first}-{last}"))
            .collect();
        ranges.join(",")
    }

    /// Whether every slot has a master.
    pub fn is_complete(&self) -> bool {
        let mut next = 0u32;
        for (first, last, _) in &self.0 {
            if u32::from(*first) != next {
                return false;
            }
            next = u32::from(*last) + 1;
        }
        next == u32::from(SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_computes() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("{user1000}.followers"), 3443);
        assert_eq!(slot_of("foo{}{bar}"), 8363); // an empty tag: the whole name
        assert_eq!(slot_of("foo{{bar}}zap"), 4015); // the tag is "{bar"
        assert_eq!(slot_of("{bar"), 4015); // no closing brace: the whole name
                                           // A channel, its history and its counter share a slot.
        let c = "mt:live:acct_1:tasks";
        assert_eq!(slot_of(&format!("{{{c}}}:h")), slot_of(c));
        assert_eq!(slot_of(&format!("{{{c}}}:m")), slot_of(c));
    }

    fn range(a: i64, b: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(a),
            Value::Int(b),
            Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]),
        ])
    }

    #[test]
    fn the_slot_map_finds_each_slots_master() {
        let map = SlotMap::parse(Value::Array(vec![
            range(10923, 16383, 7002),
            range(0, 5460, 7000),
            range(5461, 10922, 7001),
        ]))
        .unwrap();
        assert!(map.is_complete());
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383), Some("127.0.0.1:7002"));
        assert_eq!(map.slots_of("127.0.0.1:7001"), "5461-10922");
        assert_eq!(map.slots_of("127.0.0.1:7009"), "");
        let holed = SlotMap::parse(Value::Array(vec![range(0, 99, 7000), range(200, 16383, 7001)]))
            .unwrap();
        assert!(!holed.is_complete());
        assert_eq!(holed.owner(150), None);
        let split = SlotMap::parse(Value::Array(vec![range(0, 99, 7000), range(200, 300, 7000)]));
        assert_eq!(split.unwrap().slots_of("127.0.0.1:7000"), "0-99,200-300");
        assert!(SlotMap::parse(Value::Int(1)).is_none());
    }
}
