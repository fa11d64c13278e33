//! `mpath config`: import a multipath-tools configuration, check a file.

use anyhow::{Context, Result};
use mpathd::{config, mpconf};

use crate::ConfigWhat;

pub fn run(what: ConfigWhat) -> Result<()> {
    match what {
        ConfigWhat::Import { file, conf_dir } => {
            let imported = mpconf::import(&file, conf_dir.as_deref())?;
            // What is printed must read back: check it as the daemon would.
            config::parse_str(&imported.toml, None).with_context(|| {
                format!(
                    "the translation of {} does not read back (a bug: please report it with the file)",
                    file.display()
                )
            })?;
            print!("{}", imported.toml);
            let files: Vec<String> = imported
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            eprintln!(
                "translated {}; {} setting(s) not carried over (listed in comments where they were)",
                files.join(", "),
                imported.notes.len()
            );
            Ok(())
        }
        ConfigWhat::Check { file } => {
            let c = config::load_file(&file)?;
            print!("{}", config::render(&c));
            eprintln!(
                "{}: ok ({} portal(s), {} device entr(ies), {} multipath entr(ies))",
                file.display(),
                c.portals.len(),
                c.devices.len(),
                c.multipaths.len()
            );
            Ok(())
        }
    }
}
