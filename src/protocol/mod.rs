//! The BOSH CPI wire protocol: request envelope, typed calls, errors and response shapes.
//! Knows nothing of Docker or etcd.

pub(crate) mod call;
pub(crate) mod error;
pub(crate) mod request;
pub(crate) mod response;

/// The cids live in `crate::ids` (the index records use them too); re-exported so the
/// wire types read as before.
pub(crate) use crate::ids::{self, DiskCid, SnapshotCid, StemcellCid, VmCid};
pub(crate) use call::{Call, CreateVm, NetworkSpec, NetworkType, Object, VmRequirements};
pub use error::CpiError;
pub(crate) use error::ErrorKind;
pub(crate) use request::{Request, RequestError, plain_serde_message};
pub(crate) use response::{CallResult, Info, Response, VmCloudProperties};
