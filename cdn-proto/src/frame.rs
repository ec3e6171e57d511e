//! Frames of protocol version 1 (ALPN `cdn/1`).
//!
//! Every frame is `type: u8`, `length: u32` (big-endian, payload bytes), then the payload.
//! Strings and header fields are length-prefixed with a `u16`. Requests go on bidirectional
//! QUIC streams: the edge sends `Request`; the node answers `ResponseHead`, zero or more `Data`,
//! then `End` (whose length must match the bytes sent), or `Error` at any point. A stream that
//! finishes without `End` was truncated, and its body is never treated as complete.
//!
//! After `End` the stream stays open for the requester's next `Request`, one at a time (as an
//! HTTP/1.1 keep-alive connection): the requester either sends it or finishes its side, and
//! the node then finishes its own. An `Error`, a reset or a finish ends the stream, and so
//! does the node when no request comes for 60 s (`STREAM_IDLE`). As with keep-alive, a
//! request sent on a kept stream may cross the node closing it: a requester must be ready
//! to send it again on a new stream when the stream ends, or is reset, before the answer's
//! first frame (the node never acted on it). A requester that finishes its side after its
//! one request (every short exchange: `Hello`, `Purge`, `Push`, ...) reads the stream as
//! before.
//!
//! `decode` takes a `BytesMut` so that a `Data` payload is split off without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::CacheStatus;

/// Largest payload accepted in one frame. Bodies are cut into `Data` frames of at most
/// [`MAX_DATA`]; header frames are far smaller. A peer sending more is broken or hostile.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest `Data` payload a sender produces.
pub const MAX_DATA: usize = 256 * 1024;
/// Bytes of the frame header (type + length).
pub const HEADER_LEN: usize = 5;

const T_REQUEST: u8 = 1;
const T_RESPONSE_HEAD: u8 = 2;
const T_DATA: u8 = 3;
const T_END: u8 = 4;
const T_ERROR: u8 = 5;
const T_MEMBERS_REQUEST: u8 = 6;
const T_MEMBERS: u8 = 7;
const T_HELLO: u8 = 8;
const T_PURGE: u8 = 9;
const T_ACK: u8 = 10;
const T_RESUME: u8 = 11;
const T_PUSH: u8 = 12;
const T_PENDING: u8 = 13;
const T_STATUS_REQUEST: u8 = 14;
const T_STATUS: u8 = 15;
const T_LAST: u8 = T_STATUS;

/// Request methods a node serves. Anything else never leaves the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET: the body is wanted.
    Get,
    /// HEAD: only the head is wanted; the node still fills the full object.
    Head,
}

/// Why a node could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The origin could not be reached or timed out; another node would likely fail too.
    OriginUnreachable,
    /// The origin broke off the response (e.g. closed mid-body).
    OriginBroken,
    /// The request was malformed.
    BadRequest,
    /// The node is shutting down or overloaded: retry on another owner.
    Unavailable,
    /// A bug or resource failure inside the node.
    Internal,
    /// Asked only for what is stored (`only-if-cached`, a hedge), and it is not.
    NotCached,
    /// A code this version does not know (from a newer peer).
    Unknown(u16),
}

impl ErrorCode {
    fn code(self) -> u16 {
        match self {
            ErrorCode::OriginUnreachable => 1,
            ErrorCode::OriginBroken => 2,
            ErrorCode::BadRequest => 3,
            ErrorCode::Unavailable => 4,
            ErrorCode::Internal => 5,
            ErrorCode::NotCached => 6,
            ErrorCode::Unknown(c) => c,
        }
    }

    fn from_code(c: u16) -> Self {
        match c {
            1 => ErrorCode::OriginUnreachable,
            2 => ErrorCode::OriginBroken,
            3 => ErrorCode::BadRequest,
            4 => ErrorCode::Unavailable,
            5 => ErrorCode::Internal,
            6 => ErrorCode::NotCached,
            c => ErrorCode::Unknown(c),
        }
    }
}

/// One cache node as members see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable identity, the input of placement.
    pub id: String,
    /// QUIC address (`ip:port`).
    pub addr: String,
    /// Region name, empty when none is set.
    pub region: String,
    /// Liveness as the sender sees it.
    pub state: MemberState,
}

impl Member {
    /// An alive member.
    pub fn alive(
        id: impl Into<String>,
        addr: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            addr: addr.into(),
            region: region.into(),
            state: MemberState::Alive,
        }
    }

    /// Whether requests should be routed to it (alive, or suspected but not yet declared down).
    pub fn routable(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }
}

/// A member's liveness, from the failure detector (SWIM) and graceful leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MemberState {
    /// Answering probes.
    #[default]
    Alive,
    /// Missed a probe; still routed to until declared down.
    Suspect,
    /// Declared down by the failure detector (crashed or unreachable).
    Down,
    /// Left the cluster on purpose (shut down gracefully).
    Left,
}

impl MemberState {
    /// The state's name, as `/status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }

    fn code(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Down => 2,
            MemberState::Left => 3,
        }
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Down,
            3 => MemberState::Left,
            _ => return Err(DecodeError::Malformed("unknown member state")),
        })
    }
}

/// What kind of member is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An edge (serves clients, holds an L1).
    Edge,
    /// A cache node.
    Node,
}

/// What a purge removes (hard) or marks stale (soft).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Exact path-and-query keys.
    pub urls: Vec<String>,
    /// Key prefixes.
    pub prefixes: Vec<String>,
    /// Surrogate keys (tags).
    pub tags: Vec<String>,
    /// Everything.
    pub all: bool,
    /// Mark stale instead of removing.
    pub soft: bool,
}

/// A place in a node's numbered invalidation log. `epoch` is drawn when the node starts, so
/// positions from before a restart never look current. The zero position means "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Position {
    /// The node's log incarnation.
    pub epoch: u64,
    /// Sequence number within the epoch (the first invalidation is 1).
    pub seq: u64,
}

/// A header field: lowercase name, raw value bytes.
pub type Field = (String, Bytes);

/// A protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Edge → node: the request that opens a stream.
    Request {
        /// Request id, carried into logs on both sides.
        id: u64,
        /// GET or HEAD.
        method: Method,
        /// Path and query as the client sent it; the cache key.
        path: String,
        /// End-to-end request header fields to forward upstream.
        headers: Vec<Field>,
    },
    /// Node → edge: status and header fields of the response.
    ResponseHead {
        /// HTTP status code.
        status: u16,
        /// What the node did.
        cache: CacheStatus,
        /// The node that answered.
        node: String,
        /// Body length when known up front.
        content_length: Option<u64>,
        /// Response header fields, `Age` included.
        headers: Vec<Field>,
    },
    /// A piece of the body.
    Data(Bytes),
    /// The body is complete; `len` is its total length, checked by the receiver.
    End {
        /// Total body bytes sent in `Data` frames.
        len: u64,
    },
    /// The node cannot answer (or finish answering) this request.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail for logs.
        message: String,
    },
    /// Edge → node: which cache nodes do you know?
    MembersRequest,
    /// Node → edge: the members the node knows, itself included.
    Members {
        /// Known members.
        members: Vec<Member>,
    },
    /// A member introduces itself on a new connection; answered with `Members`. The node
    /// then knows the connection belongs to `id` and sends it invalidations.
    Hello {
        /// The member's id.
        id: String,
        /// Edge or node.
        role: Role,
        /// Its region.
        region: String,
        /// The QUIC address it serves on (nodes), empty for edges.
        addr: String,
        /// The last invalidation it applied from this node, to resume from (edges).
        resume: Position,
    },
    /// An invalidation. `forward`: the receiver (a node) passes it on to every edge connected
    /// to it before acknowledging.
    Purge {
        /// Identifies the purge in logs and acknowledgements.
        id: u64,
        /// Pass on to connected edges.
        forward: bool,
        /// Its place in the sending node's log (zero when not numbered).
        at: Position,
        /// What to invalidate.
        inv: Invalidation,
    },
    /// Node → edge, after `Members` in answer to `Hello`: the invalidations the edge missed
    /// since its `resume` position, or `gap` when the log no longer reaches back that far (or
    /// the node restarted): then the edge drops everything it got from this node.
    Resume {
        /// The node's current log position.
        at: Position,
        /// Missed invalidations, oldest first.
        replay: Vec<Invalidation>,
        /// The log cannot say what was missed.
        gap: bool,
    },
    /// Stores an object: followed by its body as `Data` frames and `End`, answered by `Ack`.
    /// `forward`: the receiving node also pushes it into every connected edge.
    Push {
        /// Identifies the push in logs.
        id: u64,
        /// Path and query, the cache key.
        key: String,
        /// Response status to store.
        status: u16,
        /// Response header fields to store (caching headers included).
        headers: Vec<Field>,
        /// Pass on to connected edges.
        forward: bool,
    },
    /// Node → edge, before `ResponseHead` on a miss: the node is alive and filling from the
    /// origin, so a slow answer is the origin's, not a hung node's (no hedge is sent).
    Pending,
    /// The answer to `Purge` and `Push`: members that applied it, and members that should
    /// have but did not acknowledge in time.
    Ack {
        /// Members that applied the purge.
        acked: Vec<String>,
        /// Members that did not acknowledge.
        missing: Vec<String>,
    },
    /// Any member → a linked member: how are you? Answered by one `Status` frame per member
    /// reported, then the end of the stream.
    StatusRequest {
        /// A node also reports the edges linked to it (asking each of them in turn); an edge,
        /// or a node asked without it, reports itself alone.
        linked: bool,
    },
    /// One member's status, as a document the protocol does not interpret (JSON, UTF-8,
    /// written and read by the tiers' admin code). At most [`MAX_PAYLOAD`] bytes like every
    /// frame; senders keep it far smaller.
    Status {
        /// The document.
        doc: Bytes,
    },
}

/// A frame could not be decoded; the stream it came from must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type byte names no frame of this version.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The length prefix exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload does not match the frame's layout.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl Frame {
    /// The frame's type name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Request { .. } => "Request",
            Frame::ResponseHead { .. } => "ResponseHead",
            Frame::Data(_) => "Data",
            Frame::End { .. } => "End",
            Frame::Error { .. } => "Error",
            Frame::MembersRequest => "MembersRequest",
            Frame::Members { .. } => "Members",
            Frame::Hello { .. } => "Hello",
            Frame::Purge { .. } => "Purge",
            Frame::Ack { .. } => "Ack",
            Frame::Push { .. } => "Push",
            Frame::Pending => "Pending",
            Frame::Resume { .. } => "Resume",
            Frame::StatusRequest { .. } => "StatusRequest",
            Frame::Status { .. } => "Status",
        }
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// # Panics
    /// If a string exceeds 65,535 bytes, or a header field or list does outside a request or
    /// response head (which leave such fields out, [`put_borrowed_fields`]): the sender
    /// validates those limits before building a frame.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let mut payload = BytesMut::new();
        let ty = match self {
            // The heads have one encoder, which also serves borrowed fields.
            Frame::Request {
                id,
                method,
                path,
                headers,
            } => {
                encode_request(&mut payload, *id, *method, path, borrowed(headers));
                dst.put_slice(&payload);
                return;
            }
            Frame::ResponseHead {
                status,
                cache,
                node,
                content_length,
                headers,
            } => {
                encode_response_head(
                    &mut payload,
                    *status,
                    *cache,
                    node,
                    *content_length,
                    borrowed(headers),
                );
                dst.put_slice(&payload);
                return;
            }
            Frame::Data(data) => {
                encode_data_header(data.len(), dst);
                dst.put_slice(data);
                return;
            }
            Frame::End { len } => {
                payload.put_u64(*len);
                T_END
            }
            Frame::Error { code, message } => {
                payload.put_u16(code.code());
                put_str(
                    &mut payload,
                    truncate_utf8(message, u16::MAX as usize).as_bytes(),
                );
                T_ERROR
            }
            Frame::MembersRequest => T_MEMBERS_REQUEST,
            Frame::Pending => T_PENDING,
            Frame::Members { members } => {
                payload.put_u16(len_u16(members.len()));
                for m in members {
                    put_str(&mut payload, m.id.as_bytes());
                    put_str(&mut payload, m.addr.as_bytes());
                    put_str(&mut payload, m.region.as_bytes());
                    payload.put_u8(m.state.code());
                }
                T_MEMBERS
            }
            Frame::Hello {
                id,
                role,
                region,
                addr,
                resume,
            } => {
                put_str(&mut payload, id.as_bytes());
                payload.put_u8(match role {
                    Role::Edge => 1,
                    Role::Node => 2,
                });
                put_str(&mut payload, region.as_bytes());
                put_str(&mut payload, addr.as_bytes());
                put_position(&mut payload, resume);
                T_HELLO
            }
            Frame::Purge {
                id,
                forward,
                at,
                inv,
            } => {
                payload.put_u64(*id);
                payload.put_u8(u8::from(*forward));
                put_position(&mut payload, at);
                put_invalidation(&mut payload, inv);
                T_PURGE
            }
            Frame::Resume { at, replay, gap } => {
                put_position(&mut payload, at);
                payload.put_u8(u8::from(*gap));
                payload.put_u16(len_u16(replay.len()));
                for inv in replay {
                    put_invalidation(&mut payload, inv);
                }
                T_RESUME
            }
            Frame::Push {
                id,
                key,
                status,
                headers,
                forward,
            } => {
                payload.put_u64(*id);
                put_str(&mut payload, key.as_bytes());
                payload.put_u16(*status);
                put_fields(&mut payload, headers);
                payload.put_u8(u8::from(*forward));
                T_PUSH
            }
            Frame::Ack { acked, missing } => {
                put_list(&mut payload, acked);
                put_list(&mut payload, missing);
                T_ACK
            }
            Frame::StatusRequest { linked } => {
                payload.put_u8(u8::from(*linked));
                T_STATUS_REQUEST
            }
            Frame::Status { doc } => {
                // Length-prefixed by the frame itself: a document may exceed a u16 string.
                payload.put_slice(doc);
                T_STATUS
            }
        };
        dst.put_u8(ty);
        dst.put_u32(payload.len() as u32);
        dst.put_slice(&payload);
    }

    /// The encoded frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame from the front of `src`, consuming it.
    ///
    /// `Ok(None)`: `src` does not hold a whole frame yet (nothing is consumed).
    pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let ty = src[0];
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize;
        if !(T_REQUEST..=T_LAST).contains(&ty) {
            return Err(DecodeError::UnknownType(ty));
        }
        if len > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(len));
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let mut p = src.split_to(len).freeze();
        let frame = match ty {
            T_REQUEST => {
                let id = get_u64(&mut p)?;
                let method = match get_u8(&mut p)? {
                    1 => Method::Get,
                    2 => Method::Head,
                    _ => return Err(DecodeError::Malformed("unknown method")),
                };
                let path = get_string(&mut p)?;
                let headers = get_fields(&mut p)?;
                Frame::Request {
                    id,
                    method,
                    path,
                    headers,
                }
            }
            T_RESPONSE_HEAD => {
                let status = get_u16(&mut p)?;
                if !(100..=999).contains(&status) {
                    return Err(DecodeError::Malformed("status out of range"));
                }
                let cache = CacheStatus::from_code(get_u8(&mut p)?)
                    .ok_or(DecodeError::Malformed("unknown cache status"))?;
                let node = get_string(&mut p)?;
                let content_length = match get_u8(&mut p)? {
                    0 => None,
                    1 => Some(get_u64(&mut p)?),
                    _ => return Err(DecodeError::Malformed("bad content-length flag")),
                };
                let headers = get_fields(&mut p)?;
                Frame::ResponseHead {
                    status,
                    cache,
                    node,
                    content_length,
                    headers,
                }
            }
            T_DATA => return Ok(Some(Frame::Data(p))),
            T_END => Frame::End {
                len: get_u64(&mut p)?,
            },
            T_ERROR => Frame::Error {
                code: ErrorCode::from_code(get_u16(&mut p)?),
                message: get_string(&mut p)?,
            },
            T_MEMBERS_REQUEST => Frame::MembersRequest,
            T_PENDING => Frame::Pending,
            T_MEMBERS => {
                let n = get_u16(&mut p)? as usize;
                let mut members = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    members.push(Member {
                        id: get_string(&mut p)?,
                        addr: get_string(&mut p)?,
                        region: get_string(&mut p)?,
                        state: MemberState::from_code(get_u8(&mut p)?)?,
                    });
                }
                Frame::Members { members }
            }
            T_HELLO => Frame::Hello {
                id: get_string(&mut p)?,
                role: match get_u8(&mut p)? {
                    1 => Role::Edge,
                    2 => Role::Node,
                    _ => return Err(DecodeError::Malformed("unknown role")),
                },
                region: get_string(&mut p)?,
                addr: get_string(&mut p)?,
                resume: get_position(&mut p)?,
            },
            T_PURGE => Frame::Purge {
                id: get_u64(&mut p)?,
                forward: get_bool(&mut p)?,
                at: get_position(&mut p)?,
                inv: get_invalidation(&mut p)?,
            },
            T_RESUME => {
                let at = get_position(&mut p)?;
                let gap = get_bool(&mut p)?;
                let n = get_u16(&mut p)? as usize;
                let mut replay = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    replay.push(get_invalidation(&mut p)?);
                }
                Frame::Resume { at, replay, gap }
            }
            T_PUSH => Frame::Push {
                id: get_u64(&mut p)?,
                key: get_string(&mut p)?,
                status: get_u16(&mut p)?,
                headers: get_fields(&mut p)?,
                forward: get_bool(&mut p)?,
            },
            T_ACK => Frame::Ack {
                acked: get_list(&mut p)?,
                missing: get_list(&mut p)?,
            },
            T_STATUS_REQUEST => Frame::StatusRequest {
                linked: get_bool(&mut p)?,
            },
            T_STATUS => return Ok(Some(Frame::Status { doc: p })),
            _ => return Err(DecodeError::UnknownType(ty)),
        };
        if p.has_remaining() {
            return Err(DecodeError::Malformed("trailing bytes in frame"));
        }
        Ok(Some(frame))
    }
}

/// Writes the header of a `Data` frame of `len` bytes, so a sender can follow it with a
/// cached `Bytes` without copying the body into a frame buffer.
pub fn encode_data_header(len: usize, dst: &mut impl BufMut) {
    assert!(len <= MAX_PAYLOAD, "data frame larger than MAX_PAYLOAD");
    dst.put_u8(T_DATA);
    dst.put_u32(len as u32);
}

/// Encodes a `Request` frame into `dst` straight from borrowed parts: the bytes
/// [`Frame::encode`] writes for the owned frame, without building its fields first (see
/// [`put_borrowed_fields`]).
pub fn encode_request<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    dst: &mut BytesMut,
    id: u64,
    method: Method,
    path: &str,
    fields: impl IntoIterator<Item = (N, V)>,
) {
    let start = begin_frame(dst, T_REQUEST);
    dst.put_u64(id);
    dst.put_u8(match method {
        Method::Get => 1,
        Method::Head => 2,
    });
    put_str(dst, path.as_bytes());
    put_borrowed_fields(dst, fields);
    end_frame(dst, start);
}

/// Encodes a `ResponseHead` frame into `dst` straight from borrowed parts: the bytes
/// [`Frame::encode`] writes for the owned frame, without building its fields first. A node
/// answers every hit with one, from its stored fields.
pub fn encode_response_head<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    dst: &mut BytesMut,
    status: u16,
    cache: CacheStatus,
    node: &str,
    content_length: Option<u64>,
    fields: impl IntoIterator<Item = (N, V)>,
) {
    let start = begin_frame(dst, T_RESPONSE_HEAD);
    dst.put_u16(status);
    dst.put_u8(cache.code());
    put_str(dst, node.as_bytes());
    match content_length {
        Some(n) => {
            dst.put_u8(1);
            dst.put_u64(n);
        }
        None => dst.put_u8(0),
    }
    put_borrowed_fields(dst, fields);
    end_frame(dst, start);
}

/// Owned fields as the borrowed encoders take them.
fn borrowed(fields: &[Field]) -> impl Iterator<Item = (&[u8], &[u8])> {
    fields.iter().map(|(n, v)| (n.as_bytes(), v.as_ref()))
}

/// Writes a frame's type and a length to be filled in by [`end_frame`]; returns where the
/// frame starts.
fn begin_frame(dst: &mut BytesMut, ty: u8) -> usize {
    let start = dst.len();
    dst.put_u8(ty);
    dst.put_u32(0);
    start
}

/// Fills in the length of the frame that starts at `start`.
fn end_frame(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start - HEADER_LEN) as u32;
    dst[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Header fields as the frames carry them, from any borrowed form. A field whose name or
/// value is longer than a `u16` can say is left out, as `fields_from_headers` leaves it out
/// (no HTTP peer of ours sends one), and so is any past the 65,535th.
fn put_borrowed_fields<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    dst: &mut BytesMut,
    fields: impl IntoIterator<Item = (N, V)>,
) {
    let count_at = dst.len();
    dst.put_u16(0);
    let mut count: u16 = 0;
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        if count == u16::MAX {
            break;
        }
        if name.len() > usize::from(u16::MAX) || value.len() > usize::from(u16::MAX) {
            continue;
        }
        put_str(dst, name);
        put_str(dst, value);
        count += 1;
    }
    dst[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).expect("field longer than 65535 bytes: checked by the sender")
}

fn put_str(dst: &mut BytesMut, s: &[u8]) {
    dst.put_u16(len_u16(s.len()));
    dst.put_slice(s);
}

fn put_fields(dst: &mut BytesMut, fields: &[Field]) {
    dst.put_u16(len_u16(fields.len()));
    for (name, value) in fields {
        put_str(dst, name.as_bytes());
        put_str(dst, value);
    }
}

fn put_position(dst: &mut BytesMut, at: &Position) {
    dst.put_u64(at.epoch);
    dst.put_u64(at.seq);
}

fn get_position(p: &mut Bytes) -> Result<Position, DecodeError> {
    Ok(Position {
        epoch: get_u64(p)?,
        seq: get_u64(p)?,
    })
}

fn get_bool(p: &mut Bytes) -> Result<bool, DecodeError> {
    match get_u8(p)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Malformed("boolean out of range")),
    }
}

fn put_invalidation(dst: &mut BytesMut, inv: &Invalidation) {
    dst.put_u8(u8::from(inv.all) | u8::from(inv.soft) << 1);
    put_list(dst, &inv.urls);
    put_list(dst, &inv.prefixes);
    put_list(dst, &inv.tags);
}

fn get_invalidation(p: &mut Bytes) -> Result<Invalidation, DecodeError> {
    let flags = get_u8(p)?;
    if flags > 0b11 {
        return Err(DecodeError::Malformed("unknown invalidation flags"));
    }
    Ok(Invalidation {
        all: flags & 1 != 0,
        soft: flags & 2 != 0,
        urls: get_list(p)?,
        prefixes: get_list(p)?,
        tags: get_list(p)?,
    })
}

fn put_list(dst: &mut BytesMut, items: &[String]) {
    dst.put_u16(len_u16(items.len()));
    for i in items {
        put_str(dst, i.as_bytes());
    }
}

fn get_list(p: &mut Bytes) -> Result<Vec<String>, DecodeError> {
    let n = get_u16(p)? as usize;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(get_string(p)?);
    }
    Ok(out)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn need(p: &Bytes, n: usize) -> Result<(), DecodeError> {
    if p.remaining() < n {
        Err(DecodeError::Malformed("payload shorter than its fields"))
    } else {
        Ok(())
    }
}

fn get_u8(p: &mut Bytes) -> Result<u8, DecodeError> {
    need(p, 1)?;
    Ok(p.get_u8())
}

fn get_u16(p: &mut Bytes) -> Result<u16, DecodeError> {
    need(p, 2)?;
    Ok(p.get_u16())
}

fn get_u64(p: &mut Bytes) -> Result<u64, DecodeError> {
    need(p, 8)?;
    Ok(p.get_u64())
}

fn get_bytes(p: &mut Bytes) -> Result<Bytes, DecodeError> {
    let n = get_u16(p)? as usize;
    need(p, n)?;
    Ok(p.split_to(n))
}

fn get_string(p: &mut Bytes) -> Result<String, DecodeError> {
    let b = get_bytes(p)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("string is not UTF-8"))
}

fn get_fields(p: &mut Bytes) -> Result<Vec<Field>, DecodeError> {
    let n = get_u16(p)? as usize;
    let mut fields = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let name = get_string(p)?;
        let value = get_bytes(p)?;
        fields.push((name, value));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heads' wire layout, byte for byte (type, length, then the fields in order), as
    /// the encoders write it from borrowed fields and as it decodes: a change to either
    /// encoder that moves a byte breaks every peer of an older release.
    #[test]
    fn heads_have_their_wire_layout() {
        let mut request = BytesMut::from(&b"xy"[..]);
        encode_request(
            &mut request,
            42,
            Method::Get,
            "/a",
            [(&b"accept"[..], &b"*/*"[..])],
        );
        let mut want: Vec<u8> = b"xy".to_vec();
        want.extend([T_REQUEST, 0, 0, 0, 28]);
        want.extend(42u64.to_be_bytes());
        want.push(1);
        want.extend(b"\x00\x02/a\x00\x01\x00\x06accept\x00\x03*/*");
        assert_eq!(&request[..], &want[..]);
        assert_eq!(
            Frame::decode(&mut request.split_off(2)).unwrap(),
            Some(Frame::Request {
                id: 42,
                method: Method::Get,
                path: "/a".into(),
                headers: vec![("accept".into(), Bytes::from_static(b"*/*"))],
            })
        );

        let mut head = BytesMut::new();
        encode_response_head(
            &mut head,
            200,
            CacheStatus::Hit,
            "n1",
            Some(5),
            [("age", "0")],
        );
        let mut want: Vec<u8> = vec![T_RESPONSE_HEAD, 0, 0, 0, 26, 0, 200, 1];
        want.extend(b"\x00\x02n1\x01");
        want.extend(5u64.to_be_bytes());
        want.extend(b"\x00\x01\x00\x03age\x00\x010");
        assert_eq!(&head[..], &want[..]);
        assert_eq!(
            Frame::decode(&mut head).unwrap(),
            Some(Frame::ResponseHead {
                status: 200,
                cache: CacheStatus::Hit,
                node: "n1".into(),
                content_length: Some(5),
                headers: vec![("age".into(), Bytes::from_static(b"0"))],
            })
        );
    }

    /// A field too long for the wire is left out, and the count says so.
    #[test]
    fn a_field_too_long_is_left_out() {
        let long = vec![b'a'; 70_000];
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            200,
            CacheStatus::Hit,
            "n",
            Some(0),
            [
                (&b"a"[..], &b"1"[..]),
                (&b"b"[..], &long[..]),
                (&b"c"[..], &b"3"[..]),
            ],
        );
        let Some(Frame::ResponseHead { headers, .. }) = Frame::decode(&mut out).unwrap() else {
            panic!("not a head");
        };
        assert_eq!(
            headers,
            vec![
                ("a".to_string(), Bytes::from_static(b"1")),
                ("c".to_string(), Bytes::from_static(b"3"))
            ]
        );
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Request {
                id: 42,
                method: Method::Get,
                path: "/img/a.png?v=2".into(),
                headers: vec![("accept".into(), Bytes::from_static(b"*/*"))],
            },
            Frame::Request {
                id: u64::MAX,
                method: Method::Head,
                path: String::new(),
                headers: vec![],
            },
            Frame::ResponseHead {
                status: 200,
                cache: CacheStatus::Miss,
                node: "node-1".into(),
                content_length: Some(1 << 40),
                headers: vec![
                    ("content-type".into(), Bytes::from_static(b"text/plain")),
                    ("x-bin".into(), Bytes::from_static(&[0xff, 0x00, 0x80])),
                ],
            },
            Frame::ResponseHead {
                status: 404,
                cache: CacheStatus::Pass,
                node: "n".into(),
                content_length: None,
                headers: vec![],
            },
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Data(Bytes::new()),
            Frame::End { len: 5 },
            Frame::Error {
                code: ErrorCode::OriginBroken,
                message: "origin closed mid-body".into(),
            },
            Frame::Error {
                code: ErrorCode::Unknown(999),
                message: String::new(),
            },
            Frame::MembersRequest,
            Frame::Pending,
            Frame::Members {
                members: vec![
                    Member::alive("node-0", "127.0.0.1:4433", "eu"),
                    Member {
                        state: MemberState::Left,
                        ..Member::alive("node-1", "127.0.0.1:4434", "")
                    },
                ],
            },
            Frame::Hello {
                id: "edge-1".into(),
                role: Role::Edge,
                region: "us".into(),
                addr: String::new(),
                resume: Position { epoch: 9, seq: 12 },
            },
            Frame::Purge {
                id: 7,
                forward: true,
                at: Position { epoch: 3, seq: 4 },
                inv: Invalidation {
                    urls: vec!["/a?b=1".into()],
                    prefixes: vec!["/img/".into(), "/css/".into()],
                    tags: vec!["product-1".into()],
                    all: false,
                    soft: true,
                },
            },
            Frame::Purge {
                id: 8,
                forward: false,
                at: Position::default(),
                inv: Invalidation {
                    all: true,
                    ..Invalidation::default()
                },
            },
            Frame::Resume {
                at: Position { epoch: 1, seq: 2 },
                replay: vec![Invalidation {
                    urls: vec!["/x".into()],
                    soft: true,
                    ..Invalidation::default()
                }],
                gap: false,
            },
            Frame::Resume {
                at: Position { epoch: 5, seq: 0 },
                replay: vec![],
                gap: true,
            },
            Frame::Push {
                id: 3,
                key: "/pushed?v=1".into(),
                status: 200,
                headers: vec![("cache-control".into(), Bytes::from_static(b"max-age=60"))],
                forward: true,
            },
            Frame::Ack {
                acked: vec!["node-0".into(), "edge-1".into()],
                missing: vec!["edge-2".into()],
            },
            Frame::StatusRequest { linked: true },
            Frame::StatusRequest { linked: false },
            Frame::Status {
                doc: Bytes::from_static(br#"{"status":{"id":"edge-0","requests":5}}"#),
            },
            Frame::Status { doc: Bytes::new() },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            let got = Frame::decode(&mut buf).unwrap().unwrap();
            assert_eq!(got, f);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_input_needs_more_bytes_and_consumes_nothing() {
        for f in samples() {
            let full = f.to_bytes();
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                assert_eq!(Frame::decode(&mut buf), Ok(None), "{f:?} cut at {cut}");
                assert_eq!(buf.len(), cut);
            }
        }
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let mut buf = BytesMut::new();
        for f in samples() {
            f.encode(&mut buf);
        }
        for f in samples() {
            assert_eq!(Frame::decode(&mut buf).unwrap().unwrap(), f);
        }
        assert_eq!(Frame::decode(&mut buf), Ok(None));
    }

    #[test]
    fn data_header_matches_frame_encoding() {
        let body = Bytes::from_static(b"zero-copy");
        let mut a = BytesMut::new();
        encode_data_header(body.len(), &mut a);
        a.extend_from_slice(&body);
        assert_eq!(a.freeze(), Frame::Data(body).to_bytes());
    }

    #[test]
    fn garbage_is_rejected() {
        let mut unknown = BytesMut::from(&[0u8, 0, 0, 0, 0][..]);
        assert_eq!(
            Frame::decode(&mut unknown),
            Err(DecodeError::UnknownType(0))
        );
        let mut huge = BytesMut::from(&[T_DATA, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Frame::decode(&mut huge),
            Err(DecodeError::TooLarge(_))
        ));
        // A request whose path length runs past the payload.
        let mut short =
            BytesMut::from(&[T_REQUEST, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 9][..]);
        assert!(matches!(
            Frame::decode(&mut short),
            Err(DecodeError::Malformed(_))
        ));
        // Trailing bytes after a complete End.
        let mut trailing = BytesMut::from(&[T_END, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 7][..]);
        assert!(matches!(
            Frame::decode(&mut trailing),
            Err(DecodeError::Malformed(_))
        ));
        // A status outside 100..=999.
        let mut bad_status = BytesMut::new();
        Frame::ResponseHead {
            status: 200,
            cache: CacheStatus::Hit,
            node: String::new(),
            content_length: None,
            headers: vec![],
        }
        .encode(&mut bad_status);
        bad_status[5] = 0;
        bad_status[6] = 5;
        assert!(matches!(
            Frame::decode(&mut bad_status),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn every_truncation_or_bit_flip_is_an_error_or_a_frame_never_a_panic() {
        for f in samples() {
            let full = f.to_bytes();
            for i in 0..full.len() {
                for bit in 0..8 {
                    let mut v = full.to_vec();
                    v[i] ^= 1 << bit;
                    let mut buf = BytesMut::from(&v[..]);
                    let _ = Frame::decode(&mut buf);
                }
            }
        }
    }
}
