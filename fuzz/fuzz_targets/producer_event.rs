//! Fuzz the producer-event decoder (what arrives from Redis PUBLISH): no input may panic,
//! and a decoded event's frame must be JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use miteos_stream::{broker::codec::decode, scope::Topic};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = decode(Topic::Tasks, data, 64 * 1024, std::time::Instant::now()) {
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(e.frame.as_str()).is_ok());
    }
});
