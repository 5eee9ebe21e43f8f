//! create_vm's own refusals as BOSH errors: the request's faults (cloud_properties,
//! networks, env) are the CPI's `CpiError`, never retriable.

use crate::cloud::vm::properties::PropertiesError;
use crate::protocol::CpiError;

/// Bad cloud_properties: the same request fails the same way.
impl From<PropertiesError> for CpiError {
    fn from(e: PropertiesError) -> Self {
        CpiError::cpi(e.to_string())
    }
}
