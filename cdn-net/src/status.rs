//! Status documents between members (`StatusRequest`, answered by `Status` frames), over the
//! links they already hold: a member asks a node through the pool, a node asks an edge on the
//! connection the edge opened to it. The documents are bytes here; what they say is the
//! admin code's business (`cdn_core::cluster`).
//!
//! Every exchange is bounded: a deadline for the whole answer, [`MAX_DOC`] bytes per document,
//! [`MAX_DOCS`] documents and [`MAX_ANSWER`] bytes per answer. A peer past a bound is an
//! error, like one that does not answer in time.

use std::time::Duration;

use bytes::Bytes;
use cdn_proto::{Frame, Member};

use crate::peers::{PeerError, PeerPool};
use crate::quic::{send_frame, FrameReader, WireError};

/// Largest status document a member sends or accepts: a real one is 1-2 KiB.
pub const MAX_DOC: usize = 64 * 1024;
/// Most documents in one answer: a node and the edges linked to it.
pub const MAX_DOCS: usize = 1024;
/// Most bytes of documents in one answer.
pub const MAX_ANSWER: usize = 4 << 20;

/// Asks the node `member` for its status, and the statuses of the edges linked to it when
/// `linked`; the whole answer within `deadline`.
pub async fn ask_node(
    pool: &PeerPool,
    member: &Member,
    linked: bool,
    deadline: Duration,
) -> Result<Vec<Bytes>, PeerError> {
    let refused = |reason: String| PeerError::Refused {
        node: member.id.clone(),
        reason,
    };
    let work = async {
        let (mut send, mut reader) = pool.open(member, &Frame::StatusRequest { linked }).await?;
        let _ = send.finish();
        read_docs(&mut reader).await.map_err(refused)
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(refused(format!("no status within {deadline:?}"))))
}

/// Asks the member at the other end of `conn` (an edge linked to this node) for its status,
/// within `deadline`.
pub async fn ask_link(conn: &quinn::Connection, deadline: Duration) -> Result<Vec<Bytes>, String> {
    let work = async {
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("opening a stream: {e}"))?;
        send_frame(&mut send, &Frame::StatusRequest { linked: false })
            .await
            .map_err(|e| format!("asking: {e}"))?;
        let _ = send.finish();
        read_docs(&mut FrameReader::new(recv)).await
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(format!("no status within {deadline:?}")))
}

/// Sends `docs` as `Status` frames and finishes the stream: the answer to `StatusRequest`.
/// Documents over [`MAX_DOC`] are the caller's to shrink; they are left out here rather than
/// have the asker drop the whole answer.
pub async fn answer(send: &mut quinn::SendStream, docs: &[Bytes]) -> Result<(), WireError> {
    for doc in docs.iter().filter(|d| d.len() <= MAX_DOC).take(MAX_DOCS) {
        send_frame(send, &Frame::Status { doc: doc.clone() }).await?;
    }
    send.finish()?;
    Ok(())
}

/// Reads `Status` frames until the stream ends, within the bounds.
async fn read_docs(reader: &mut FrameReader) -> Result<Vec<Bytes>, String> {
    let mut docs = Vec::new();
    let mut total = 0usize;
    loop {
        match reader.next().await {
            Ok(Some(Frame::Status { doc })) => {
                if doc.len() > MAX_DOC {
                    return Err(format!(
                        "status document of {} bytes (limit {MAX_DOC})",
                        doc.len()
                    ));
                }
                total += doc.len();
                if docs.len() == MAX_DOCS || total > MAX_ANSWER {
                    reader.stop(crate::quic::codes::CANCELLED);
                    return Err(format!(
                        "status answer over {MAX_DOCS} documents or {MAX_ANSWER} bytes"
                    ));
                }
                docs.push(doc);
            }
            Ok(Some(Frame::Error { message, .. })) => return Err(message),
            Ok(Some(other)) => {
                return Err(format!("unexpected {} in a status answer", other.name()))
            }
            Ok(None) => return Ok(docs),
            Err(e) => return Err(format!("reading the status answer: {e}")),
        }
    }
}
