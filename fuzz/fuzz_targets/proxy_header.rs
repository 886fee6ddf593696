//! The PROXY protocol header parser (src/wire/proxy_header/): any bytes,
//! judged as they arrive in pieces of any size, give the verdict they give
//! at once (the reader consumes a partial header, so a prefix's verdict
//! must hold for the whole), never a panic; a complete header's length is
//! within the bytes and the bound, every "needs N" is at most that
//! length, and the header alone parses the same. The first input byte
//! picks the piece size and the bound; the rest is what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucp_lb::wire::proxy_header::{Parsed, V1_MAX, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let step = usize::from(first & 0x1f).max(1);
    let limit = [232, 4096, 65_551][usize::from(first >> 5) % 3];
    let at_once = parse(bytes, limit);
    let mut needs = Vec::new();
    for end in (0..bytes.len()).step_by(step).chain([bytes.len()]) {
        match parse(&bytes[..end], limit) {
            Ok(Parsed::Partial(need)) => {
                assert!(need > end, "needs {need} with {end}");
                needs.push(need);
            }
            verdict => {
                assert_eq!(verdict, at_once, "the verdict at {end} bytes is not the whole's");
                break;
            }
        }
    }
    if let Ok(Parsed::Complete(h)) = &at_once {
        assert!(h.len <= bytes.len() && h.len <= limit.max(V1_MAX));
        assert!(needs.iter().all(|&n| n <= h.len), "needed more than the header: {needs:?} > {}", h.len);
        assert_eq!(parse(&bytes[..h.len], limit), at_once);
    }
});
