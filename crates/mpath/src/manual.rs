//! `mpath completions` and `mpath man`: shell completions and man pages, both drawn from
//! the command line's own definition, so they name every command and flag there is.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::Cli;

/// The completion script for `shell`, on standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "mpath", &mut std::io::stdout());
    Ok(())
}

/// mpath(1) on standard output; with `dir`, mpath.1 and a page per subcommand
/// (mpath-daemon.1, mpath-target-ctl.1, ...) written there.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing the pages into {}", dir.display()))?;
            let mut pages: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("mpath") && n.ends_with(".1"))
                .collect();
            pages.sort();
            for p in pages {
                println!("wrote {}", dir.join(p).display());
            }
        }
    }
    Ok(())
}
