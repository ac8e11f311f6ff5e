//! The codec of every generated adflow service and client (`codec_path` in `build.rs`):
//! prost, with two differences on the receiving side.
//!
//! - A message that does not decode is the sender's fault: it answers INVALID_ARGUMENT
//!   naming the message type and field (tonic-prost answers INTERNAL, which tells a client
//!   the gateway is broken and that a retry might help; neither is true).
//! - A `WorkerMessage` is counted before it is decoded: a batch of acks, nacks or
//!   extensions holds at most `MAX_WORKER_ITEMS` items, and a Hello at most as many
//!   partitions. Decoding costs ~30 bytes of memory per byte received for such small
//!   items (an `Ack` of 6 wire bytes is a ~200-byte struct), so the count is checked on
//!   the wire, in one linear pass, before any of it is allocated.
//!
//! `EventIngest` keeps its own zero-copy codec (`raw::RawCodec`), which refuses the same
//! way.

use crate::raw::Wire;
use bytes::Buf;
use prost::Message;
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Most acks, nacks or extensions in one `WorkerMessage` (and most partitions in a Hello):
/// a worker holds at most 10000 leases (its credits), so more answers than that cannot
/// all be valid. A message over it ends the stream with INVALID_ARGUMENT.
pub const MAX_WORKER_ITEMS: usize = 10_000;

/// Refusals described one by one in a `LeaseRefusals` reply; the rest are only counted
/// (`LeaseRefusals.total`), so a reply never grows with a hostile request.
pub const MAX_REFUSAL_DETAILS: usize = 100;

/// Prost encoding; decoding that answers INVALID_ARGUMENT (see the module comment).
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// The decoder half of `StrictCodec`.
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<crate::v1::WorkerMessage>() {
            // tonic hands over one contiguous buffer; copy only if that ever changes.
            if src.chunk().len() == src.remaining() {
                check_worker_message(src.chunk())?;
            } else {
                let b = src.copy_to_bytes(src.remaining());
                check_worker_message(&b)?;
                return U::decode(b).map(Some).map_err(malformed::<U>);
            }
        }
        U::decode(src).map(Some).map_err(malformed::<U>)
    }
}

fn malformed<U>(e: prost::DecodeError) -> Status {
    let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("message");
    Status::invalid_argument(format!("malformed {name}: {e}"))
}

/// Refuses a `WorkerMessage` holding more than `MAX_WORKER_ITEMS` items in a batch or a
/// Hello (every occurrence counts: repeated occurrences of a field merge). The message
/// and its batches must follow the encoding rules that `raw` enforces (a little stricter
/// than prost: no 6-byte keys, no groups), so that nothing can hide items from the count.
pub fn check_worker_message(b: &[u8]) -> Result<(), Status> {
    const NAMES: [&str; 5] = ["", "hello.partitions", "acks", "nacks", "extends"];
    let bad = |e: crate::raw::Malformed| Status::invalid_argument(format!("malformed WorkerMessage: {e}"));
    let mut counts = [0usize; 5];
    let mut w = Wire::new(b);
    while !w.done() {
        let (field, wt) = w.key().map_err(bad)?;
        let r = (if wt == 2 { w.len_delimited() } else { w.skip(wt).map(|_| 0..0) }).map_err(bad)?;
        if !(1..=4).contains(&field) || wt != 2 {
            continue;
        }
        // Hello.partitions is field 2 of the Hello; each batch holds its items in field 1.
        let item = if field == 1 { 2 } else { 1 };
        counts[field as usize] += count_field(&b[r], item).map_err(bad)?;
    }
    for (name, n) in NAMES.iter().zip(counts) {
        if n > MAX_WORKER_ITEMS {
            return Err(Status::invalid_argument(format!(
                "WorkerMessage.{name} has {n} items; at most {MAX_WORKER_ITEMS} are allowed per message (split it)"
            )));
        }
    }
    Ok(())
}

/// How many values of `field` a message holds (packed varints count one each).
fn count_field(b: &[u8], field: u32) -> Result<usize, crate::raw::Malformed> {
    let mut n = 0;
    let mut w = Wire::new(b);
    while !w.done() {
        let (f, wt) = w.key()?;
        if wt == 2 {
            let r = w.len_delimited()?;
            // A packed repeated scalar (Hello.partitions): one value per final varint byte.
            let packed = field == 2;
            n += if f != field {
                0
            } else if packed {
                b[r].iter().filter(|&&x| x < 0x80).count()
            } else {
                1
            };
        } else {
            w.skip(wt)?;
            n += usize::from(f == field);
        }
    }
    Ok(n)
}

/// The status that ends a stream whose next inbound message could not be received:
/// tonic reports a message over `max_decoding_message_size` as OUT_OF_RANGE, which gRPC
/// reserves for ranges; the gRPC spec answers it with RESOURCE_EXHAUSTED. Everything else
/// (INVALID_ARGUMENT from the codecs, transport errors) keeps its code. `what` says which
/// message it was, e.g. "message 3 of the stream".
pub fn inbound_error(status: &Status, what: &str) -> Status {
    let code = match status.code() {
        tonic::Code::OutOfRange => tonic::Code::ResourceExhausted,
        c => c,
    };
    Status::new(code, format!("{what}: {}; nothing after it was read", status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Ack, AckBatch, Hello, WorkerMessage, worker_message::Kind};

    fn acks(n: u64) -> Vec<u8> {
        let acks = (0..n).map(|lease_id| Ack { lease_id, result: None }).collect();
        WorkerMessage { kind: Some(Kind::Acks(AckBatch { acks })) }.encode_to_vec()
    }

    #[test]
    fn worker_batches_are_counted_on_the_wire() {
        assert!(check_worker_message(&acks(MAX_WORKER_ITEMS as u64)).is_ok());
        let e = check_worker_message(&acks(MAX_WORKER_ITEMS as u64 + 1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("acks has 10001 items"), "{e:?}");
        // Two occurrences of the field merge: their items add up.
        let mut twice = acks(6_000);
        twice.extend(acks(6_000));
        assert!(check_worker_message(&twice).is_err());
        let hello = |n| {
            let h = Hello { worker_id: "w".into(), partitions: vec![5; n], credits: 1 };
            WorkerMessage { kind: Some(Kind::Hello(h)) }.encode_to_vec()
        };
        assert!(check_worker_message(&hello(MAX_WORKER_ITEMS)).is_ok());
        assert!(check_worker_message(&hello(MAX_WORKER_ITEMS + 1)).is_err());
        // Bytes that hide items from the count are refused: a cut batch, a 6-byte key.
        let e = check_worker_message(&[0x12, 0x05, 0x01]).unwrap_err();
        assert!(e.message().starts_with("malformed WorkerMessage"), "{e:?}");
        assert!(check_worker_message(&[0x92, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00]).is_err());
    }

    #[test]
    fn undecodable_messages_are_invalid_argument_naming_the_field() {
        let e = malformed::<crate::v1::GetAdRequest>(
            crate::v1::GetAdRequest::decode(&[0x0a, 0x01, 0xff][..]).unwrap_err(),
        );
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("malformed GetAdRequest: ") && e.message().contains("GetAdRequest.id"),
            "{e:?}"
        );
    }
}
