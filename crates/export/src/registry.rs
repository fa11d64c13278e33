//! The registry of exported maps: name → device, shared by the NBD server and the FUSE mount.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use block::{BlockDevice, DeviceInfo};

use crate::io::BlockIo;

/// Longest export name: NAME_MAX, since every name is also a file name in the FUSE
/// directory (NBD alone would allow 4096 bytes).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name cannot be an export name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("export name is empty")]
    Empty,
    #[error("export name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error("export name {0:?} contains '/' or NUL, or is '.' or '..'")]
    NotAFileName(String),
    #[error("an export named {0:?} already exists")]
    Exists(String),
    #[error("no export named {0:?}")]
    Missing(String),
}

/// One exported map: its name, description and device, and the I/O layer both adapters use.
pub struct Export<D> {
    name: String,
    description: Option<String>,
    /// The exported LU's WWID, when the device is a map (the FUSE file's `user.mpath.wwid`).
    wwid: Option<String>,
    /// The FUSE inode number: unique for the registry's lifetime, so a removed and re-added
    /// map is a new file to the kernel.
    ino: u64,
    /// Shared with the same map exported under another name after a rename (one set of
    /// range locks for every connection).
    io: Arc<BlockIo<D>>,
}

impl<D: BlockDevice> Export<D> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The exported LU's WWID, if the device has one.
    pub fn wwid(&self) -> Option<&str> {
        self.wwid.as_deref()
    }

    pub fn device(&self) -> &Arc<D> {
        self.io.device()
    }

    pub fn info(&self) -> DeviceInfo {
        self.io.device().info()
    }

    /// The byte-range I/O layer over the device (alignment, splitting, range locks).
    pub fn io(&self) -> &BlockIo<D> {
        &self.io
    }

    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }
}

/// Map name → device, cheap to clone (clones share the same registry).
pub struct Exports<D> {
    inner: Arc<RwLock<Registry<D>>>,
}

struct Registry<D> {
    by_name: BTreeMap<String, Arc<Export<D>>>,
    next_ino: u64,
}

/// Inode 1 is the FUSE root directory; maps count from 2.
const FIRST_MAP_INO: u64 = 2;

impl<D> Clone for Exports<D> {
    fn clone(&self) -> Self {
        Exports {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<D: BlockDevice> Default for Exports<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: BlockDevice> Exports<D> {
    pub fn new() -> Exports<D> {
        Exports {
            inner: Arc::new(RwLock::new(Registry {
                by_name: BTreeMap::new(),
                next_ino: FIRST_MAP_INO,
            })),
        }
    }

    /// Export `device` as `name` (NBD export name and FUSE file name).
    pub fn insert(&self, name: &str, device: Arc<D>) -> Result<Arc<Export<D>>, NameError> {
        self.insert_described(name, None, device)
    }

    /// As [`insert`](Self::insert), with a description NBD clients show (`nbdinfo --list`).
    pub fn insert_described(
        &self,
        name: &str,
        description: Option<String>,
        device: Arc<D>,
    ) -> Result<Arc<Export<D>>, NameError> {
        self.insert_identified(name, description, None, device)
    }

    /// As [`insert_described`](Self::insert_described), for a device with a WWID: the FUSE
    /// file carries it (`user.mpath.wwid`) so that a loop device over the file can be named
    /// by it (`mpath udev loop`).
    pub fn insert_identified(
        &self,
        name: &str,
        description: Option<String>,
        wwid: Option<String>,
        device: Arc<D>,
    ) -> Result<Arc<Export<D>>, NameError> {
        check_name(name)?;
        let mut r = self.write();
        if r.by_name.contains_key(name) {
            return Err(NameError::Exists(name.to_string()));
        }
        let export = Arc::new(Export {
            name: name.to_string(),
            description,
            wwid,
            ino: r.next_ino,
            io: Arc::new(BlockIo::new(device)),
        });
        r.next_ino += 1;
        r.by_name.insert(name.to_string(), Arc::clone(&export));
        tracing::info!(export = name, "exported");
        Ok(export)
    }

    /// Stop exporting `name`. Connections and open files that already hold it keep working
    /// until they close; new ones cannot find it.
    pub fn remove(&self, name: &str) -> Option<Arc<Export<D>>> {
        let removed = self.write().by_name.remove(name);
        if removed.is_some() {
            tracing::info!(export = name, "no longer exported");
        }
        removed
    }

    /// Export `old` as `new` instead, at once: NBD connections and open files that hold
    /// it go on (the FUSE file keeps its inode), new ones find it under `new` only.
    pub fn rename(&self, old: &str, new: &str) -> Result<(), NameError> {
        check_name(new)?;
        let mut r = self.write();
        if r.by_name.contains_key(new) {
            return Err(NameError::Exists(new.to_string()));
        }
        let Some(e) = r.by_name.remove(old) else {
            return Err(NameError::Missing(old.to_string()));
        };
        let renamed = Arc::new(Export {
            name: new.to_string(),
            description: e.description.clone(),
            wwid: e.wwid.clone(),
            ino: e.ino,
            io: Arc::clone(&e.io),
        });
        r.by_name.insert(new.to_string(), renamed);
        tracing::info!(export = new, "renamed from {old}");
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Export<D>>> {
        self.read().by_name.get(name).cloned()
    }

    /// Every export, in name order.
    pub fn list(&self) -> Vec<Arc<Export<D>>> {
        self.read().by_name.values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().by_name.keys().cloned().collect()
    }

    pub(crate) fn by_ino(&self, ino: u64) -> Option<Arc<Export<D>>> {
        self.read().by_name.values().find(|e| e.ino == ino).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry<D>> {
        // Nothing panics while holding the lock; a poisoned lock still holds a valid map.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry<D>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.len() > MAX_NAME_LEN {
        Err(NameError::TooLong(name.to_string()))
    } else if name.contains(['/', '\0']) || name == "." || name == ".." {
        Err(NameError::NotAFileName(name.to_string()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemDevice;

    #[test]
    fn names() {
        let e = Exports::new();
        let d = Arc::new(MemDevice::new(1 << 20, 512));
        assert!(e.insert("a", Arc::clone(&d)).is_ok());
        assert_eq!(
            e.insert("a", Arc::clone(&d)).err(),
            Some(NameError::Exists("a".into()))
        );
        assert_eq!(e.insert("", Arc::clone(&d)).err(), Some(NameError::Empty));
        assert!(matches!(
            e.insert("x/y", Arc::clone(&d)),
            Err(NameError::NotAFileName(_))
        ));
        assert!(matches!(
            e.insert("..", Arc::clone(&d)),
            Err(NameError::NotAFileName(_))
        ));
        assert!(matches!(
            e.insert(&"n".repeat(256), Arc::clone(&d)),
            Err(NameError::TooLong(_))
        ));
        assert!(e.insert("b", Arc::clone(&d)).is_ok());
        assert_eq!(e.names(), vec!["a".to_string(), "b".to_string()]);
        let a = e.get("a").map(|x| x.ino());
        assert!(e.remove("a").is_some());
        assert!(e.get("a").is_none());
        let again = e.insert("a", d).map(|x| x.ino()).ok();
        assert_ne!(a, again, "a re-added map is a new inode");
    }
}
