//! The ClientHello reader of routed listeners (src/wire/sni.rs): any bytes,
//! arriving in pieces of any size, give the same verdict as the same bytes
//! arriving at once, never a panic, and a name only when it is one as
//! routes compare names (lower case, no trailing dot, 1 to 253 bytes). The
//! first input byte is the size of the pieces; the rest is what the client
//! sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucp_lb::wire::sni::{HELLO_LIMIT, Hello, Records, normalise, server_name};

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else { return };
    // preread reads no further than the bound.
    let bytes = &bytes[..bytes.len().min(HELLO_LIMIT)];
    let step = usize::from(step).max(1);
    let at_once = Records::default().examine(bytes, HELLO_LIMIT);
    let mut records = Records::default();
    let mut in_pieces = None;
    for end in (step..bytes.len()).step_by(step).chain([bytes.len()]) {
        in_pieces = records.examine(&bytes[..end], HELLO_LIMIT);
        if in_pieces.is_some() {
            break;
        }
    }
    assert_eq!(in_pieces, at_once, "the verdict depends on how the bytes arrive");
    if let Some(Ok(Hello::Name(name))) = &at_once {
        assert!(!name.is_empty() && name.len() <= 253 && *name == normalise(name), "{name:?}");
    }
    // The extension parser alone, on the raw bytes as a hello's body.
    if let Ok(Some(name)) = server_name(bytes) {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
    }
});
