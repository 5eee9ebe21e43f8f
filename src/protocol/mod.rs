//! The BOSH CPI wire protocol: request envelope, typed calls, errors and response shapes.
//! Knows nothing of Docker or etcd.

pub mod call;
pub mod error;
pub mod ids;
pub mod request;
pub mod response;

pub use call::{Call, CreateVm, NetworkSpec, NetworkType, Object, VmRequirements};
pub use error::{CpiError, ErrorKind};
pub use ids::{DiskCid, MalformedCid, SnapshotCid, StemcellCid, VmCid};
pub use request::{ApiVersion, Request, plain_serde_message};
pub use response::{CallResult, Response};
