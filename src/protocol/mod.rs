//! The BOSH CPI wire protocol: request envelope, typed calls, errors and response shapes.
//! Knows nothing of Docker or etcd.

pub mod call;
pub mod error;
pub mod request;
pub mod response;

/// The cids live in `crate::ids` (the index records use them too); re-exported so the
/// wire types read as before.
pub use crate::ids::{self, DiskCid, MalformedCid, SnapshotCid, StemcellCid, VmCid};
pub use call::{Call, CreateVm, NetworkSpec, NetworkType, Object, VmRequirements};
pub use error::{CpiError, ErrorKind};
pub use request::{ApiVersion, Request, plain_serde_message};
pub use response::{CallResult, Info, Response, VmCloudProperties};
