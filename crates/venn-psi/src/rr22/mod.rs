//! RR22 VOLE-based PSI (being written; see issue 3).

use crate::channel::Channel;
use crate::core::{CoreInput, CoreOutput};
use crate::error::PsiError;

/// Not available yet: refuses clearly instead of pretending.
pub(crate) fn intersect(
    _chan: &dyn Channel,
    _input: &CoreInput<'_>,
) -> Result<CoreOutput, PsiError> {
    Err(PsiError::Config {
        field: "--protocol",
        message: "rr22 is not available in this build; use --protocol ecdh".into(),
    })
}
