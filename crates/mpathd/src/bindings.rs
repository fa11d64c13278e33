//! User-friendly names (`mpatha`, `mpathb`, … `mpathz`, `mpathaa`, …) kept stable across
//! restarts in a bindings file, one `name wwid` per line — the format of multipath-tools'
//! `/etc/multipath/bindings`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names given to WWIDs.
#[derive(Debug, Default)]
pub struct Bindings {
    file: Option<PathBuf>,
    by_wwid: BTreeMap<String, String>,
}

impl Bindings {
    /// Load `file` if it exists (a missing file is an empty table). Malformed lines are
    /// reported and skipped, never fatal: a damaged bindings file must not stop the daemon.
    pub fn load(file: Option<&Path>) -> (Bindings, Vec<String>) {
        let mut b = Bindings {
            file: file.map(Path::to_path_buf),
            by_wwid: BTreeMap::new(),
        };
        let mut warnings = Vec::new();
        let Some(path) = file else {
            return (b, warnings);
        };
        let text = match read_state(path) {
            Ok(Some(t)) => t,
            Ok(None) => return (b, warnings),
            Err(e) => {
                warnings.push(e);
                return (b, warnings);
            }
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(name), Some(wwid), None) if crate::config::valid_name(name) => {
                    if b.by_wwid.values().any(|n| n == name) {
                        warnings.push(format!(
                            "{}:{}: name {name} is bound twice; ignored",
                            path.display(),
                            i + 1
                        ));
                        continue;
                    }
                    b.by_wwid.insert(wwid.to_string(), name.to_string());
                }
                _ => warnings.push(format!(
                    "{}:{}: expected \"NAME WWID\", ignored",
                    path.display(),
                    i + 1
                )),
            }
        }
        (b, warnings)
    }

    /// The name bound to `wwid`, binding the next free `mpathX` if there is none yet.
    pub fn name_for(&mut self, wwid: &str) -> Result<String, std::io::Error> {
        if let Some(n) = self.by_wwid.get(wwid) {
            return Ok(n.clone());
        }
        let mut i = 0usize;
        let name = loop {
            let n = format!("mpath{}", suffix(i));
            if !self.by_wwid.values().any(|v| *v == n) {
                break n;
            }
            i += 1;
        };
        self.by_wwid.insert(wwid.to_string(), name.clone());
        self.save()?;
        Ok(name)
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        write_state(
            path,
            "# mpath bindings: NAME WWID (written by mpath daemon)",
            self.by_wwid
                .iter()
                .map(|(wwid, name)| format!("{name} {wwid}")),
        )
    }
}

/// A state file of the daemon's (bindings, reservation keys): its text, `None` when it does
/// not exist yet, or why it cannot be read.
pub(crate) fn read_state(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Write a state file whole: `header`, then one line each. Write-then-rename: a crash
/// leaves the old file or the new one, never half.
pub(crate) fn write_state(
    path: &Path,
    header: &str,
    lines: impl Iterator<Item = String>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{header}")?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// a, b, … z, aa, ab, … (multipath-tools' alias suffixes).
fn suffix(mut i: usize) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(suffix(0), "a");
        assert_eq!(suffix(25), "z");
        assert_eq!(suffix(26), "aa");
        assert_eq!(suffix(27), "ab");
        assert_eq!(suffix(26 + 26 * 26), "aaa");
    }

    #[test]
    fn stable_across_restarts() {
        let dir = std::env::temp_dir().join(format!("mpath-bindings-{}", std::process::id()));
        let file = dir.join("bindings");
        let _ = std::fs::remove_dir_all(&dir);
        let (mut b, w) = Bindings::load(Some(&file));
        assert!(w.is_empty());
        assert_eq!(b.name_for("3aaa").unwrap(), "mpatha");
        assert_eq!(b.name_for("3bbb").unwrap(), "mpathb");
        assert_eq!(b.name_for("3aaa").unwrap(), "mpatha");
        let (mut b2, _) = Bindings::load(Some(&file));
        assert_eq!(b2.name_for("3bbb").unwrap(), "mpathb");
        assert_eq!(b2.name_for("3ccc").unwrap(), "mpathc");
        std::fs::write(&file, "garbage line here\nmpathz 3zzz\n").unwrap();
        let (mut b3, w) = Bindings::load(Some(&file));
        assert_eq!(w.len(), 1);
        assert_eq!(b3.name_for("3zzz").unwrap(), "mpathz");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
