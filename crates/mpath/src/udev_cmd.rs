//! `mpath udev`: stable names for a loop device over a map's FUSE file, through udev.
//!
//! The daemon links `/dev/mpath/<map>` and `/dev/disk/by-id/mpath-<wwid>` for the devices
//! it attaches itself (ublk, kernel NBD). A loop device over a map's file is attached by
//! someone else (`losetup`), so udev names it: the rule in `dist/udev/69-mpath-loop.rules`
//! runs `mpath udev loop loopN` on every event of a loop device, which asks the backing
//! file which LU it is ([`export::fuse::file_wwid`]) and prints the names for the rule.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::UdevWhat;

/// The rules as shipped in the tree, `@MPATH@` standing for the binary.
const RULES: &str = include_str!("../../../dist/udev/69-mpath-loop.rules");

pub fn run(what: UdevWhat) -> Result<()> {
    match what {
        UdevWhat::Loop { device } => {
            let name = device.strip_prefix("/dev/").unwrap_or(&device);
            for (k, v) in loop_names(Path::new("/sys/block"), Path::new("/dev/mpath"), name)? {
                println!("{k}={v}");
            }
            Ok(())
        }
        UdevWhat::Rules { mpath } => {
            let bin = match mpath {
                Some(p) => p,
                None => std::env::current_exe().context("the path of this mpath binary")?,
            };
            let bin = bin
                .to_str()
                .context("the mpath binary's path is not UTF-8")?;
            if bin.contains(char::is_whitespace) || bin.contains('"') {
                bail!("{bin:?}: udev cannot run a program whose path has spaces or quotes");
            }
            print!("{}", RULES.replace("@MPATH@", bin));
            Ok(())
        }
    }
}

/// The udev environment for loop device `name`: `MPATH_MAP` and `MPATH_WWID` when it is
/// attached to a map's file in an mpath FUSE directory and the map has no device of the
/// daemon's holding the names; nothing otherwise (not an error: udev runs this for every
/// loop device).
fn loop_names(sys_block: &Path, by_alias: &Path, name: &str) -> Result<Vec<(String, String)>> {
    if !name.starts_with("loop")
        || name[4..].is_empty()
        || !name[4..].bytes().all(|b| b.is_ascii_digit())
    {
        bail!("{name:?} is not a loop device (loopN)");
    }
    let backing_file = sys_block.join(name).join("loop/backing_file");
    let backing = match std::fs::read_to_string(&backing_file) {
        Ok(s) => PathBuf::from(s.trim_end_matches('\n')),
        // Not attached.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", backing_file.display())),
    };
    let Some(map) = backing.file_name().and_then(|m| m.to_str()) else {
        return Ok(Vec::new());
    };
    // A file that cannot be opened (a dead daemon's mount, a deleted file) names nothing.
    let Ok(Some(wwid)) = export::fuse::file_wwid(&backing) else {
        return Ok(Vec::new());
    };
    if held_by_daemon(&by_alias.join(map)) {
        return Ok(Vec::new());
    }
    Ok(vec![
        ("MPATH_MAP".to_string(), map.to_string()),
        ("MPATH_WWID".to_string(), wwid),
    ])
}

/// `/dev/mpath/<map>` points at a device the daemon attached (ublk, NBD) that still exists.
fn held_by_daemon(link: &Path) -> bool {
    let Ok(target) = std::fs::read_link(link) else {
        return false;
    };
    let dev = target.file_name().and_then(|d| d.to_str()).unwrap_or("");
    (dev.starts_with("ublkb") || dev.starts_with("nbd")) && link.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_binary() {
        assert!(RULES.contains("IMPORT{program}=\"@MPATH@ udev loop %k\""));
        assert_eq!(RULES.matches("@MPATH@").count(), 1);
    }

    #[test]
    fn loop_names_need_a_loop_device_and_an_mpath_file() {
        let dir = std::env::temp_dir().join(format!("mpath-udev-{}", std::process::id()));
        let sys = dir.join("sys");
        std::fs::create_dir_all(sys.join("loop1")).unwrap();
        std::fs::create_dir_all(sys.join("loop2/loop")).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        std::fs::write(
            sys.join("loop2/loop/backing_file"),
            format!("{}\n", plain.display()),
        )
        .unwrap();
        assert!(loop_names(&sys, &dir, "sda").is_err());
        assert!(loop_names(&sys, &dir, "loop").is_err());
        // Not attached; attached to a file that is no map's.
        assert!(loop_names(&sys, &dir, "loop1").unwrap().is_empty());
        assert!(loop_names(&sys, &dir, "loop2").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_daemon_device_keeps_the_names() {
        let dir = std::env::temp_dir().join(format!("mpath-udev-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ublkb0"), b"").unwrap();
        std::os::unix::fs::symlink("ublkb0", dir.join("mpatha")).unwrap();
        std::os::unix::fs::symlink("ublkb9", dir.join("mpathb")).unwrap();
        std::os::unix::fs::symlink("loop0", dir.join("mpathc")).unwrap();
        assert!(held_by_daemon(&dir.join("mpatha")));
        assert!(
            !held_by_daemon(&dir.join("mpathb")),
            "a dangling link holds nothing"
        );
        assert!(!held_by_daemon(&dir.join("mpathc")));
        assert!(!held_by_daemon(&dir.join("mpathd")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
