//! CSV export, streamed page by page so an export of millions of rows never sits in
//! memory at once.

use bytes::Bytes;
use futures::Stream;
use gpuaas_kernel::Cursor;
use gpuaas_store::Store;

use crate::query::{AuditFilter, fetch_page};
use crate::{AuditError, AuditLog};

/// Rows read per query while exporting; each page becomes one chunk of the stream.
pub const EXPORT_PAGE_SIZE: u32 = 500;

/// The first line of every export.
pub const CSV_HEADER: &str =
    "id,at,actor_id,actor_type,actor_role,action,target,tenant_id,result,correlation_id,details\r\n";

enum State {
    Header,
    Page(Option<Cursor>),
    Done,
}

/// Streams the entries matching `filter` as RFC 4180 CSV, newest first: the header,
/// then one chunk per [`EXPORT_PAGE_SIZE`] rows. Paging is keyset from the newest row
/// at the start, so entries recorded during the export are not included and none is
/// repeated. An invalid filter is the stream's first and only item.
pub fn export_csv(store: Store, filter: AuditFilter) -> impl Stream<Item = Result<Bytes, AuditError>> + Send + 'static {
    futures::stream::try_unfold((store, filter, State::Header), |(store, filter, state)| async move {
        match state {
            State::Header => {
                filter.validate()?;
                Ok(Some((Bytes::from_static(CSV_HEADER.as_bytes()), (store, filter, State::Page(None)))))
            }
            State::Page(after) => {
                let (items, next) = fetch_page(&store, &filter, after.as_ref(), EXPORT_PAGE_SIZE).await?;
                if items.is_empty() {
                    return Ok(None);
                }
                let mut chunk = String::new();
                for item in &items {
                    write_row(&mut chunk, item);
                }
                let state = match next {
                    Some(cursor) => State::Page(Some(cursor)),
                    None => State::Done,
                };
                Ok(Some((Bytes::from(chunk), (store, filter, state))))
            }
            State::Done => Ok(None),
        }
    })
}

fn write_row(out: &mut String, log: &AuditLog) {
    let at = log.at.to_rfc3339();
    let details = log.details.to_string();
    let cells = [
        log.id.as_str(),
        at.as_str(),
        log.actor_id.as_str(),
        log.actor_type.as_str(),
        log.actor_role.as_str(),
        log.action.as_str(),
        log.target.as_str(),
        log.tenant_id.as_deref().unwrap_or(""),
        log.result.as_str(),
        log.correlation_id.as_str(),
        details.as_str(),
    ];
    gpuaas_kernel::csv::write_row(out, &cells);
}
