//! `info`: API version and stemcell formats, answered without config or network.

use crate::protocol::{CallResult, Info};

/// Stemcell formats `create_stemcell` accepts.
pub const STEMCELL_FORMATS: &[&str] = &["warden-tar", "general-tar", "docker-light"];

/// The CPI API version this CPI speaks.
pub(crate) const API_VERSION: u32 = 2;

/// The `info` result.
pub(crate) fn info() -> CallResult {
    CallResult::Info(Info {
        api_version: API_VERSION,
        stemcell_formats: STEMCELL_FORMATS,
    })
}
