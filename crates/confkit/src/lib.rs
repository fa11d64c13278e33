//! Configuration helpers shared by mpath's target and daemon: a TOML text read so that every
//! error names the file, the line and the key ([`Ctx`], [`ConfigError`]); a suggestion for
//! a near miss ([`closest`], [`suggest`]); values both configurations take (a portal
//! address, an iSCSI name).

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration error: what is wrong, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{}: ", p.display(), l)?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            (None, Some(l)) => write!(f, "line {}: ", l)?,
            (None, None) => {}
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A TOML text being read, for errors that name the file, the line and the key (the
/// daemon's configuration reads the same way).
pub struct Ctx<'a> {
    pub file: Option<&'a Path>,
    pub src: &'a str,
}

impl Ctx<'_> {
    /// An error about `key`, at the line of `span` when known.
    pub fn err(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.map(Path::to_path_buf),
            line: span.map(|s| {
                self.src[..s.start.min(self.src.len())]
                    .matches('\n')
                    .count()
                    + 1
            }),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Deserialize the text; a syntax or shape error names its line and key.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.src).map_err(|e| {
            let key = e.message().split('`').nth(1).unwrap_or("").to_string();
            let mut message = e.message().trim().to_string();
            if let Some(s) = suggest(&message) {
                message = format!("{message}; did you mean `{s}`?");
            }
            self.err(e.span(), &key, message)
        })
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant"), the
/// expected name closest to `x`, when it is close enough to be a typo.
pub fn suggest(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (got, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    closest(got, expected.split('`').skip(1).step_by(2))
}

/// The candidate closest to `got` when it is a plausible typo of it (a few edits, or the
/// same words in another order or spelling), else `None`.
pub fn closest<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_', ' '], "");
    let g = norm(got);
    candidates
        .into_iter()
        .map(|c| {
            let n = norm(c);
            let score = if n == g {
                1.0
            } else {
                strsim::jaro_winkler(&g, &n)
            };
            (score, strsim::levenshtein(&g, &n), c)
        })
        .filter(|&(score, dist, _)| score >= 0.85 || dist <= 2)
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, c)| c.to_string())
}

/// The text of a configuration file, or an error naming it.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })
}

/// Parse `IP:PORT` or `[IPv6]:PORT`; a bare IP gets port 3260.
pub fn parse_portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 3260));
    }
    Err(format!("{s:?} is not IP:PORT"))
}

/// An iSCSI name: `iqn.`, `eui.` or `naa.` form, at most 223 bytes (RFC 7143 §4.2.7).
pub fn check_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if name.len() > 223 {
        return Err("iSCSI names are at most 223 bytes".into());
    }
    if !(lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa.")) {
        return Err(format!(
            "{name:?} is not an iSCSI name (iqn.YYYY-MM.domain:id)"
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c == ',' || c.is_control())
    {
        return Err(format!("{name:?} contains characters iSCSI names may not"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_near_misses_only() {
        let m =
            "unknown field `path_chekcer`, expected one of `checker`, `path_checker`, `selector`";
        assert_eq!(suggest(m).as_deref(), Some("path_checker"));
        assert_eq!(
            closest("tru", ["tur", "readsector0"]).as_deref(),
            Some("tur")
        );
        assert_eq!(
            closest("group-by-prio", ["group_by_prio"]).as_deref(),
            Some("group_by_prio")
        );
        assert_eq!(closest("bananas", ["tur", "readsector0", "directio"]), None);
        assert_eq!(suggest("invalid type: integer, expected a string"), None);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let src = "a = 1\nb = \"x\"\n";
        let ctx = Ctx {
            file: Some(Path::new("f.toml")),
            src,
        };
        let e = ctx.err(Some(8..9), "b", "no good");
        assert_eq!(e.to_string(), "f.toml:2: b: no good");
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
            bb: Option<String>,
        }
        let e = ctx.parse::<T>().unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "b"));
        assert!(e.message.contains("did you mean `bb`?"), "{e}");
    }

    #[test]
    fn portals_and_names() {
        assert_eq!(parse_portal("10.0.0.1").unwrap().port(), 3260);
        assert_eq!(parse_portal("[::1]:3261").unwrap().port(), 3261);
        assert!(parse_portal("host").is_err());
        assert!(check_name("iqn.2026-01.io.mpath:x").is_ok());
        assert!(check_name("host1").is_err());
        assert!(check_name("iqn.a b").is_err());
    }
}
