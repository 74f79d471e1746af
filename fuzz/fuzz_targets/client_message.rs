//! Fuzz the WebSocket client-message parser and the event-filter syntax: no input may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use miteos_stream::protocol::{filter::EventFilter, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(ClientMessage::Subscribe { events: Some(events), .. }) = ClientMessage::parse(s) {
        if let Ok(f) = EventFilter::parse(&events) {
            let _ = f.matches(s);
        }
    }
});
