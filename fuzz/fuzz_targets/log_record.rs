//! Records read back from the data directory: a Raft log entry, and a store reply as peers
//! send it. Undecodable bytes must be an error, never a panic or a deep recursion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use standin::cluster::TypeConfig;
use standin::kv::reply::Reply;

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<openraft::Entry<TypeConfig>>(data);
    let _ = postcard::from_bytes::<Reply>(data);
});
