//! Zero-copy decoding of the ingest hot path.
//!
//! prost decodes an `AdEvent` into a dozen owned `String`s and a map, which the gateway
//! would then validate, re-encode for storage and free: on this path allocation and
//! copying cost more than the work itself. Here a request is copied once into an
//! exact-size buffer and split into `Bytes` slices of it (one per event, no further copy
//! or allocation), and each event is read through an
//! `EventView` that borrows its fields. The store writes the event's original bytes, so
//! nothing is encoded twice.
//!
//! Since those bytes are stored and later read by other protobuf implementations, the
//! parser accepts exactly what both prost and the protobuf encoding rules accept (a
//! differential fuzz test, `raw/fuzz.rs`, holds it to that):
//! - prost's schema checks for every declared field (wire type, UTF-8);
//! - the encoding rules that upb and C++ protobuf enforce and prost partly does not: a
//!   field key is at most 5 bytes and at most 2^32 - 1 (field number 1..=2^29-1), the
//!   wire type is 0, 1, 2 or 5 (groups are refused, which prost would skip), a varint
//!   is at most 10 bytes, a length stays inside its message.
//!
//! Every pass is linear in the message size, including a `SendEventRequest` whose
//! `event` field is repeated (protobuf merges the parts: they are checked one by one and
//! joined in one copy).

/// `EventLog.Read` replies with events kept encoded.
pub mod log;

use crate::v1::IngestReply;
use bytes::{Buf, Bytes, BytesMut};
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(msg.into()))
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A cursor over protobuf wire data.
pub(crate) struct Wire<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    #[inline]
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.b.get(self.pos) else { return bad("truncated varint") };
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return bad("varint overflows 64 bits");
                }
                return Ok(v);
            }
        }
        bad("varint longer than 10 bytes")
    }

    /// The next field's number and wire type, refused unless the key follows the
    /// encoding rules (see the module comment).
    #[inline(always)]
    pub(crate) fn key(&mut self) -> Result<(u32, u8), Malformed> {
        // Fast path: a one-byte key (fields 1..=15) of a known wire type, which is every
        // key of an `AdEvent` a well-behaved client sends.
        if let Some(&b) = self.b.get(self.pos)
            && (8..0x80).contains(&b)
            && matches!(b & 7, VARINT | I64 | LEN | I32)
        {
            self.pos += 1;
            return Ok((u32::from(b >> 3), b & 7));
        }
        self.key_slow()
    }

    #[cold]
    #[inline(never)]
    fn key_slow(&mut self) -> Result<(u32, u8), Malformed> {
        let start = self.pos;
        let k = match self.b.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                u64::from(b)
            }
            _ => self.varint()?,
        };
        let len = self.pos - start;
        if len > 5 {
            return bad(format!("a field key is {len} bytes long; protobuf allows at most 5"));
        }
        if k > u64::from(u32::MAX) {
            return bad(format!("field number {} is above the largest, 2^29 - 1", k >> 3));
        }
        let (field, wt) = ((k >> 3) as u32, (k & 7) as u8);
        if field == 0 {
            return bad("field number 0 is invalid");
        }
        match wt {
            VARINT | I64 | LEN | I32 => Ok((field, wt)),
            3 | 4 => bad(format!("field {field} has group wire type {wt}, which is not supported")),
            _ => bad(format!("field {field} has invalid wire type {wt}")),
        }
    }

    #[inline]
    pub(crate) fn len_delimited(&mut self) -> Result<std::ops::Range<usize>, Malformed> {
        let n = self.varint()? as usize;
        let start = self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else { return bad("length-delimited field runs past the end") };
        self.pos = end;
        Ok(start..end)
    }

    #[inline]
    fn fixed64(&mut self) -> Result<[u8; 8], Malformed> {
        let Some(s) = self.b.get(self.pos..self.pos + 8) else { return bad("truncated fixed64") };
        self.pos += 8;
        Ok(s.try_into().expect("8 bytes"))
    }

    #[inline]
    pub(crate) fn skip(&mut self, wt: u8) -> Result<(), Malformed> {
        match wt {
            VARINT => self.varint().map(drop),
            I64 => self.fixed64().map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => {
                if self.pos + 4 > self.b.len() {
                    return bad("truncated fixed32");
                }
                self.pos += 4;
                Ok(())
            }
            wt => bad(format!("unsupported wire type {wt}")),
        }
    }

    #[inline]
    fn string(&mut self, field: &str) -> Result<&'a str, Malformed> {
        let r = self.len_delimited()?;
        // One pass: std's validation already runs word-at-a-time over ASCII.
        std::str::from_utf8(&self.b[r]).or_else(|_| bad(format!("{field} is not valid UTF-8")))
    }
}

fn expect(wt: u8, want: u8, field: &str) -> Result<(), Malformed> {
    if wt != want {
        return bad(format!("{field} has wire type {wt}, expected {want}"));
    }
    Ok(())
}

/// The fields of one encoded `AdEvent`, borrowed from its bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventView<'a> {
    /// See `AdEvent.event_id`.
    pub event_id: &'a str,
    /// See `AdEvent.type` (raw enum value).
    pub r#type: i32,
    /// See `AdEvent.ad_id`.
    pub ad_id: &'a str,
    /// See `AdEvent.campaign_id`.
    pub campaign_id: &'a str,
    /// See `AdEvent.game_id`.
    pub game_id: &'a str,
    /// See `AdEvent.game_family`.
    pub game_family: &'a str,
    /// See `AdEvent.user_id`.
    pub user_id: &'a str,
    /// See `AdEvent.timestamp_ms`.
    pub timestamp_ms: i64,
    /// See `AdEvent.revenue_usd`.
    pub revenue_usd: Option<f64>,
    /// See `AdEvent.video_position_ms`.
    pub video_position_ms: i64,
    /// See `AdEvent.platform` (raw enum value).
    pub platform: i32,
    /// See `AdEvent.country`.
    pub country: &'a str,
    /// See `AdEvent.device`.
    pub device: &'a str,
    /// Number of attribute entries on the wire (a repeated key counts each time).
    pub attribute_count: usize,
    /// Shortest attribute key, in bytes (0 when there are no attributes).
    pub attribute_key_min: usize,
    /// Longest attribute key, in bytes.
    pub attribute_key_max: usize,
    /// Longest attribute value, in bytes.
    pub attribute_value_max: usize,
    raw: &'a [u8],
}

impl<'a> EventView<'a> {
    /// Parses an encoded `AdEvent`; every declared field is checked as prost would.
    pub fn parse(raw: &'a [u8]) -> Result<Self, Malformed> {
        let mut v = EventView { raw, ..Default::default() };
        let mut w = Wire::new(raw);
        while !w.done() {
            let (field, wt) = w.key()?;
            match field {
                1 | 3..=7 | 12 | 13 => {
                    expect(wt, LEN, field_name(field))?;
                    let s = w.string(field_name(field))?;
                    match field {
                        1 => v.event_id = s,
                        3 => v.ad_id = s,
                        4 => v.campaign_id = s,
                        5 => v.game_id = s,
                        6 => v.game_family = s,
                        7 => v.user_id = s,
                        12 => v.country = s,
                        _ => v.device = s,
                    }
                }
                2 | 8 | 10 | 11 => {
                    expect(wt, VARINT, field_name(field))?;
                    let x = w.varint()?;
                    match field {
                        2 => v.r#type = x as i32,
                        8 => v.timestamp_ms = x as i64,
                        10 => v.video_position_ms = x as i64,
                        _ => v.platform = x as i32,
                    }
                }
                9 => {
                    expect(wt, I64, "revenue_usd")?;
                    v.revenue_usd = Some(f64::from_le_bytes(w.fixed64()?));
                }
                14 => {
                    expect(wt, LEN, "attributes")?;
                    let r = w.len_delimited()?;
                    let (k, val) = map_entry(&raw[r])?;
                    v.attribute_key_min =
                        if v.attribute_count == 0 { k.len() } else { v.attribute_key_min.min(k.len()) };
                    v.attribute_key_max = v.attribute_key_max.max(k.len());
                    v.attribute_value_max = v.attribute_value_max.max(val.len());
                    v.attribute_count += 1;
                }
                _ => w.skip(wt)?,
            }
        }
        Ok(v)
    }

    /// The attribute entries, in wire order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut w = Wire::new(self.raw);
        std::iter::from_fn(move || {
            while !w.done() {
                let (field, wt) = w.key().ok()?;
                if field == 14 && wt == LEN {
                    let r = w.len_delimited().ok()?;
                    return map_entry(&w.b[r]).ok();
                }
                w.skip(wt).ok()?;
            }
            None
        })
    }
}

fn field_name(field: u32) -> &'static str {
    match field {
        1 => "event_id",
        2 => "type",
        3 => "ad_id",
        4 => "campaign_id",
        5 => "game_id",
        6 => "game_family",
        7 => "user_id",
        8 => "timestamp_ms",
        10 => "video_position_ms",
        11 => "platform",
        12 => "country",
        13 => "device",
        _ => "field",
    }
}

/// One `map<string, string>` entry: key = field 1, value = field 2, both optional.
fn map_entry(b: &[u8]) -> Result<(&str, &str), Malformed> {
    let (mut k, mut v) = ("", "");
    let mut w = Wire::new(b);
    while !w.done() {
        match w.key()? {
            (1, LEN) => k = w.string("attributes key")?,
            (2, LEN) => v = w.string("attributes value")?,
            (1 | 2, wt) => return bad(format!("attributes entry field has wire type {wt}, expected 2")),
            (_, wt) => w.skip(wt)?,
        }
    }
    Ok((k, v))
}

/// The few fields analytics needs, read from an event that already passed `EventView`
/// (ids stay bytes: no second UTF-8 check on the commit path).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Facts<'a> {
    /// Raw `type` value.
    pub r#type: i32,
    /// `ad_id` bytes.
    pub ad_id: &'a [u8],
    /// `campaign_id` bytes.
    pub campaign_id: &'a [u8],
    /// `timestamp_ms`.
    pub timestamp_ms: i64,
    /// `revenue_usd`.
    pub revenue_usd: Option<f64>,
    /// `video_position_ms`.
    pub video_position_ms: i64,
}

impl<'a> Facts<'a> {
    /// Reads the analytics fields of an encoded `AdEvent`.
    pub fn parse(raw: &'a [u8]) -> Result<Self, Malformed> {
        let mut f = Facts::default();
        let mut w = Wire::new(raw);
        while !w.done() {
            match w.key()? {
                (2, VARINT) => f.r#type = w.varint()? as i32,
                (3, LEN) => f.ad_id = &raw[w.len_delimited()?],
                (4, LEN) => f.campaign_id = &raw[w.len_delimited()?],
                (8, VARINT) => f.timestamp_ms = w.varint()? as i64,
                (9, I64) => f.revenue_usd = Some(f64::from_le_bytes(w.fixed64()?)),
                (10, VARINT) => f.video_position_ms = w.varint()? as i64,
                (_, wt) => w.skip(wt)?,
            }
        }
        Ok(f)
    }
}

/// Returns `raw` with `timestamp_ms` set to `ts` (a later occurrence of a scalar field
/// wins in protobuf, so appending the field is enough).
pub fn with_timestamp(raw: &[u8], ts: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + 11);
    out.extend_from_slice(raw);
    out.extend_from_slice(&[8 << 3]);
    let mut v = ts as u64;
    while v >= 0x80 {
        out.extend_from_slice(&[(v as u8) | 0x80]);
        v >>= 7;
    }
    out.extend_from_slice(&[v as u8]);
    out.freeze()
}

/// A `SendEventsRequest` whose events are still encoded.
#[derive(Clone, Debug, Default)]
pub struct RawEvents {
    /// Each event's bytes, sharing the request buffer.
    pub events: Vec<Bytes>,
    /// See `SendEventsRequest.ack_mode`.
    pub ack_mode: i32,
    /// See `SendEventsRequest.sequence`.
    pub sequence: u64,
}

/// A `SendEventRequest` whose event is still encoded.
#[derive(Clone, Debug, Default)]
pub struct RawEvent {
    /// The event's bytes; `None` when the field is absent.
    pub event: Option<Bytes>,
    /// See `SendEventRequest.ack_mode`.
    pub ack_mode: i32,
}

/// A request type decoded by `RawCodec`.
pub trait RawDecode: Sized {
    /// Decodes the message held in `buf`.
    fn decode_raw(buf: Bytes) -> Result<Self, Malformed>;
}

impl RawDecode for RawEvents {
    fn decode_raw(buf: Bytes) -> Result<Self, Malformed> {
        let mut out = RawEvents::default();
        let mut w = Wire::new(&buf);
        while !w.done() {
            match w.key()? {
                (1, LEN) => {
                    let r = w.len_delimited()?;
                    out.events.push(buf.slice(r));
                }
                (2, VARINT) => out.ack_mode = w.varint()? as i32,
                (3, VARINT) => out.sequence = w.varint()?,
                (f @ 1..=3, wt) => return bad(format!("SendEventsRequest field {f} has wire type {wt}")),
                (_, wt) => w.skip(wt)?,
            }
        }
        Ok(out)
    }
}

impl RawDecode for RawEvent {
    fn decode_raw(buf: Bytes) -> Result<Self, Malformed> {
        let mut out = RawEvent::default();
        // A repeated singular message field merges, which concatenating the parts does;
        // each part must still be a valid event on its own, as prost decodes each alone.
        let (mut first, mut parts, mut total) = (0..0, 0usize, 0usize);
        let mut w = Wire::new(&buf);
        while !w.done() {
            match w.key()? {
                (1, LEN) => {
                    let r = w.len_delimited()?;
                    parts += 1;
                    total += r.len();
                    if parts == 1 {
                        first = r;
                    } else {
                        if parts == 2 {
                            check_part(&buf[first.clone()], 1)?;
                        }
                        check_part(&buf[r], parts)?;
                    }
                }
                (2, VARINT) => out.ack_mode = w.varint()? as i32,
                (f @ 1..=2, wt) => return bad(format!("SendEventRequest field {f} has wire type {wt}")),
                (_, wt) => w.skip(wt)?,
            }
        }
        out.event = match parts {
            0 => None,
            1 => Some(buf.slice(first)),
            _ => {
                // One pass, one exact-size copy: linear however many parts there are.
                let mut joined = BytesMut::with_capacity(total);
                let mut w = Wire::new(&buf);
                while !w.done() {
                    match w.key()? {
                        (1, LEN) => joined.extend_from_slice(&buf[w.len_delimited()?]),
                        (_, wt) => w.skip(wt)?,
                    }
                }
                Some(joined.freeze())
            }
        };
        Ok(out)
    }
}

/// Part `n` (from 1) of a merged `event` field.
fn check_part(b: &[u8], n: usize) -> Result<(), Malformed> {
    EventView::parse(b).map(drop).map_err(|e| Malformed(format!("event (part {n} of a merged field): {e}")))
}

/// Decodes requests with `RawDecode`, encodes replies with prost.
pub struct RawCodec<E, D>(PhantomData<(E, D)>);

impl<E, D> Default for RawCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The decoder half of `RawCodec`.
pub struct RawDecoder<D>(PhantomData<D>);

impl<D: RawDecode> Decoder for RawDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        // One exact-size copy per message: the events then pin only their own request's
        // bytes, not tonic's (much larger) receive buffer, while they wait for the store.
        let buf = Bytes::copy_from_slice(&src.copy_to_bytes(src.remaining()));
        D::decode_raw(buf).map(Some).map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }
}

impl<D: RawDecode + Send + 'static> Codec for RawCodec<IngestReply, D> {
    type Encode = IngestReply;
    type Decode = D;
    type Encoder = tonic_prost::ProstEncoder<IngestReply>;
    type Decoder = RawDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder(PhantomData)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
