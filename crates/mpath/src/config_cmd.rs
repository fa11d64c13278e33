//! `mpath config`: import a multipath-tools configuration, check a file.

use anyhow::Result;

use crate::ConfigWhat;

pub fn run(what: ConfigWhat) -> Result<()> {
    match what {
        ConfigWhat::Import { .. } | ConfigWhat::Check { .. } => {
            anyhow::bail!("not yet")
        }
    }
}
