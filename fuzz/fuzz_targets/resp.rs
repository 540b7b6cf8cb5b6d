//! Bytes from a store client, before and after AUTH, with the store's default limits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use standin::store::resp::{Limits, RespCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    for authenticated in [false, true] {
        let mut codec = RespCodec::new(Limits {
            max_bulk_len: 4 * 1024 * 1024,
            max_request_len: 4 * 1024 * 1024,
            ..Limits::default()
        });
        codec.set_authenticated(authenticated);
        let mut buf = BytesMut::new();
        'feed: for piece in data.chunks(5) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
});
