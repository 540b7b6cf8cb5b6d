//! Bytes from a peer: the stream decoder (any chunking), then every frame as a request and as
//! an answer. Nothing may panic, overflow the stack or hold more than what arrived.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use standin::cluster::rpc::{Frame, Request, Response};
use standin::cluster::transport::FrameDecoder;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<Frame<Request>>(data);
    let _ = postcard::from_bytes::<Frame<Response>>(data);
    let mut buf = BytesMut::new();
    let mut dec = FrameDecoder::default();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = dec.decode(&mut buf) {
            let _ = postcard::from_bytes::<Frame<Request>>(&frame);
        }
    }
});
