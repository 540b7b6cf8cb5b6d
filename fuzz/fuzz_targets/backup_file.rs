//! A backup file from disk (`standin backup verify`, `restore`): any bytes are refused or
//! accepted without a panic, and nothing larger than the section limits is allocated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = standin::backup::format::read(data, |_| Ok(()));
    // The same bytes after a valid magic and version reach the section parser.
    let mut framed = standin::backup::format::MAGIC.to_vec();
    framed.extend_from_slice(&standin::backup::format::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    let _ = standin::backup::format::read(&framed[..], |_| Ok(()));
});
