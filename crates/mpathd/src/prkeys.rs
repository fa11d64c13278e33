//! The reservation keys maps registered (`mpath persist register`), kept across restarts
//! of the daemon in a file beside the bindings file (`prkeys`, one `0xKEY WWID` per line —
//! the format of multipath-tools' `/etc/multipath/prkeys`): a restarted or upgraded
//! daemon goes on registering the key on paths that join or come back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys by WWID.
#[derive(Debug, Default)]
pub struct PrKeys {
    file: Option<PathBuf>,
    by_wwid: BTreeMap<String, u64>,
}

impl PrKeys {
    /// The keys recorded beside `bindings` (`None`: in memory only). A missing file is
    /// empty; malformed lines are reported and skipped.
    pub fn load(bindings: Option<&Path>) -> (PrKeys, Vec<String>) {
        let file = bindings.map(|b| b.with_file_name("prkeys"));
        let mut k = PrKeys {
            file: file.clone(),
            by_wwid: BTreeMap::new(),
        };
        let mut warnings = Vec::new();
        let Some(path) = file else {
            return (k, warnings);
        };
        let text = match crate::bindings::read_state(&path) {
            Ok(Some(t)) => t,
            Ok(None) => return (k, warnings),
            Err(e) => {
                warnings.push(e);
                return (k, warnings);
            }
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.split_whitespace();
            let parsed = match (it.next(), it.next(), it.next()) {
                (Some(key), Some(wwid), None) => crate::persist::parse_key(key)
                    .ok()
                    .filter(|k| *k != 0)
                    .map(|k| (wwid, k)),
                _ => None,
            };
            match parsed {
                Some((wwid, key)) => {
                    k.by_wwid.insert(wwid.to_string(), key);
                }
                None => warnings.push(format!(
                    "{}:{}: expected \"0xKEY WWID\", ignored",
                    path.display(),
                    i + 1
                )),
            }
        }
        (k, warnings)
    }

    pub fn get(&self, wwid: &str) -> Option<u64> {
        self.by_wwid.get(wwid).copied()
    }

    /// Record `key` (`None`: none) for `wwid`, and write the file.
    pub fn set(&mut self, wwid: &str, key: Option<u64>) -> std::io::Result<()> {
        let changed = match key {
            Some(k) => self.by_wwid.insert(wwid.to_string(), k) != Some(k),
            None => self.by_wwid.remove(wwid).is_some(),
        };
        if changed {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        crate::bindings::write_state(
            path,
            "# mpath reservation keys: 0xKEY WWID (written by mpath daemon)",
            self.by_wwid
                .iter()
                .map(|(wwid, key)| format!("0x{key:x} {wwid}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_loads() {
        let dir = std::env::temp_dir().join(format!("mpath-prkeys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bindings = dir.join("bindings");
        let (mut k, w) = PrKeys::load(Some(&bindings));
        assert!(w.is_empty());
        k.set("3aaa", Some(0xabc)).unwrap();
        k.set("3bbb", Some(0x1)).unwrap();
        k.set("3bbb", None).unwrap();
        let (k2, _) = PrKeys::load(Some(&bindings));
        assert_eq!(k2.get("3aaa"), Some(0xabc));
        assert_eq!(k2.get("3bbb"), None);
        std::fs::write(dir.join("prkeys"), "0xzz 3x\n0x5 3ccc\nonly-one\n").unwrap();
        let (k3, w) = PrKeys::load(Some(&bindings));
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(k3.get("3ccc"), Some(5));
        let _ = std::fs::remove_dir_all(&dir);
        // In memory only.
        let (mut m, _) = PrKeys::load(None);
        m.set("3a", Some(7)).unwrap();
        assert_eq!(m.get("3a"), Some(7));
    }
}
