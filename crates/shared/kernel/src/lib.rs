//! Technical primitives every other crate speaks: identifiers (row ids and canonical
//! resource ids), timestamps, pagination cursors and the error envelope with its stable
//! code catalog.
//!
//! This crate owns no tables and no business policy. It must never depend on another
//! gpuaas crate, on a database, or on an HTTP framework: the node agent links it too.

pub mod csv;
pub mod cursor;
pub mod error;
pub mod id;
pub mod resource_id;
pub mod time;

pub use cursor::{Cursor, PageError, page_limit};
pub use error::{ErrCode, ErrorBody, ErrorResponse};
pub use id::new_id;
pub use resource_id::{ResourceId, ResourceIdError, ResourceIdFormat, ResourceType};
pub use time::Timestamp;
