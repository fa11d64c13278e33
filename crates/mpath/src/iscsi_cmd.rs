//! `mpath iscsi discover | probe | io`: what an operator uses instead of iscsiadm + sg3_utils.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use block::{DataPhase, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::{
    discover, probe, ChapCredentials, DiscoveryConfig, IscsiPath, RetryPolicy, Session,
    SessionConfig,
};
use scsi::cdb::build;
use serde_json::json;

use crate::{IscsiCmd, IscsiCommon, IscsiOp};

pub async fn run(c: IscsiCmd) -> Result<()> {
    match c.op {
        IscsiOp::Discover { portal, common } => discover_cmd(&portal, &common).await,
        IscsiOp::Probe {
            portal,
            target,
            common,
        } => probe_cmd(&portal, &target, &common).await,
        IscsiOp::Io {
            portal,
            target,
            lun,
            verify,
            size,
            bs,
            depth,
            common,
        } => {
            let size = iscsi_target::size::parse_size(&size)
                .map_err(|m| anyhow::anyhow!("--size: {m}"))?;
            let bs =
                iscsi_target::size::parse_size(&bs).map_err(|m| anyhow::anyhow!("--bs: {m}"))?;
            io_cmd(&portal, &target, lun, verify, size, bs, depth, &common).await
        }
        IscsiOp::Perf {
            portal,
            target,
            lun,
            bs,
            depth,
            seconds,
            common,
        } => {
            let bs =
                iscsi_target::size::parse_size(&bs).map_err(|m| anyhow::anyhow!("--bs: {m}"))?;
            perf_cmd(&portal, &target, lun, bs, depth, seconds, &common).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn perf_cmd(
    p: &str,
    target: &str,
    lun: u16,
    bs: u64,
    depth: usize,
    seconds: f64,
    c: &IscsiCommon,
) -> Result<()> {
    let p = portal(p)?;
    let s = Session::open(session_config(p, target, c)?).await?;
    let path = IscsiPath::new(s.clone(), lun, RetryPolicy::default());
    let info = probe::probe_lu(&path).await.context("probing the LU")?;
    if info.blocks == 0 {
        bail!(
            "LUN {lun} has no known capacity through {p}: this port does not serve it now \
             (ALUA {}); use a portal whose port group is active",
            info.alua
                .map_or("state unknown".to_string(), |(st, _)| st.to_string())
        );
    }
    let block = info.block_size as u64;
    if bs == 0 || !bs.is_multiple_of(block) || bs > info.blocks * block {
        bail!("--bs {bs} must be a non-zero multiple of the block size {block} within the LU");
    }
    let blocks_per = bs / block;
    let (n, took) = crate::bench::random_reads(
        Duration::from_secs_f64(seconds.max(0.1)),
        depth.clamp(1, 1024),
        info.blocks,
        blocks_per,
        move |lba| {
            let path = path.clone();
            async move {
                let req = ScsiRequest {
                    cdb: Bytes::copy_from_slice(
                        build::read_16(lba, blocks_per as u32, false).as_bytes(),
                    ),
                    data: DataPhase::In { len: bs as u32 },
                };
                path.command(req).await.map(|_| ())
            }
        },
    )
    .await?;
    s.logout().await;
    let iops = n as f64 / took;
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"iops": iops, "mb_per_s": iops * bs as f64 / 1e6, "bs": bs, "depth": depth, "seconds": took})
            )?
        );
    } else {
        println!(
            "{:.0} IOPS, {:.1} MB/s ({} B random reads, depth {depth}, {took:.1} s)",
            iops,
            iops * bs as f64 / 1e6,
            bs
        );
    }
    Ok(())
}

fn portal(s: &str) -> Result<SocketAddr> {
    resolve_portal(s).map_err(|m| anyhow::anyhow!("portal: {m}"))
}

/// A portal as an operator writes it: `IP`, `IP:PORT`, `[IPv6]:PORT`, `HOST` or
/// `HOST:PORT` (port 3260 by default). A host name is resolved now, once; its first IPv4
/// address is taken, else its first IPv6 one (a session's portal is one address).
pub fn resolve_portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = iscsi_target::config::parse_portal(s) {
        return Ok(a);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: {p:?} is not a port number"))?,
        ),
        _ => (s, 3260),
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return Err(format!("{s:?} is not IP[:PORT] nor HOST[:PORT]"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("host {host:?} has no address"))
}

fn creds(s: &Option<String>, flag: &str) -> Result<Option<ChapCredentials>> {
    s.as_deref()
        .map(|v| match v.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(ChapCredentials::new(u, p)),
            _ => bail!("{flag}: expected USER:SECRET"),
        })
        .transpose()
}

fn session_config(p: SocketAddr, target: &str, c: &IscsiCommon) -> Result<SessionConfig> {
    let mut cfg = SessionConfig::new(p, target).with_digests(c.header_digest, c.data_digest);
    if let Some(i) = &c.initiator {
        cfg.initiator_name = i.clone();
    }
    cfg.chap = creds(&c.chap, "--chap")?;
    cfg.mutual_chap = creds(&c.mutual_chap, "--mutual-chap")?;
    // A diagnostic tool reports a lost connection rather than waiting for it to come back.
    cfg.replacement_timeout = Duration::ZERO;
    cfg.max_attempts = Some(1);
    Ok(cfg)
}

async fn discover_cmd(p: &str, c: &IscsiCommon) -> Result<()> {
    let p = portal(p)?;
    let mut cfg = DiscoveryConfig::default();
    if let Some(i) = &c.initiator {
        cfg.initiator_name = i.clone();
    }
    cfg.chap = creds(&c.chap, "--chap")?;
    let targets = discover(p, &cfg).await?;
    if c.json {
        let v: Vec<_> = targets
            .iter()
            .map(|t| {
                json!({
                    "target": t.name,
                    "portals": t.portals.iter().map(|p| json!({"address": p.address, "tpgt": p.tpgt})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if targets.is_empty() {
        println!("{p} offers no target to {}", cfg.initiator_name);
    }
    for t in targets {
        println!("{}", t.name);
        for p in t.portals {
            println!("    {},{}", p.address, p.tpgt);
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

async fn probe_cmd(p: &str, target: &str, c: &IscsiCommon) -> Result<()> {
    let p = portal(p)?;
    let s = Session::open(session_config(p, target, c)?).await?;
    let path0 = IscsiPath::new(s.clone(), 0, RetryPolicy::default());
    let luns = probe::report_luns(&path0).await.context("REPORT LUNS")?;
    let mut infos = Vec::new();
    for lun in luns {
        let path = IscsiPath::new(s.clone(), lun, RetryPolicy::default());
        match probe::probe_lu(&path).await {
            Ok(i) => infos.push(Ok(i)),
            Err(e) => infos.push(Err((lun, e))),
        }
    }
    let tsih = s.tsih().map(|t| t.0).unwrap_or(0);
    s.logout().await;
    if c.json {
        let v: Vec<_> = infos
            .iter()
            .map(|r| match r {
                Ok(i) => json!({
                    "lun": i.lun,
                    "device_type": i.device_type,
                    "vendor": i.vendor,
                    "product": i.product,
                    "revision": i.revision,
                    "size": i.blocks * i.block_size as u64,
                    "block_size": i.block_size,
                    "blocks": i.blocks,
                    "wwid": i.wwid,
                    "serial": i.serial,
                    "tpgs": i.tpgs,
                    "relative_target_port": i.relative_target_port,
                    "target_port_group": i.target_port_group,
                    "alua_state": i.alua.map(|a| probe::alua_name(a.0)),
                    "alua_preferred": i.alua.map(|a| a.1),
                    "thin": i.thin,
                }),
                Err((lun, e)) => json!({"lun": lun, "error": e.to_string()}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"target": target, "portal": p.to_string(), "tsih": tsih, "luns": v})
            )?
        );
        return Ok(());
    }
    println!("{target} via {p} (TSIH {tsih})");
    for r in infos {
        match r {
            Ok(i) => {
                let kind = match i.device_type {
                    0x00 => "disk",
                    0x0c => "controller",
                    0x0d => "enclosure",
                    _ => "other",
                };
                if i.device_type != 0 {
                    println!(
                        "  LUN {}  {kind}  {} {} {}",
                        i.lun, i.vendor, i.product, i.revision
                    );
                    continue;
                }
                println!(
                    "  LUN {}  {kind}  {} {} {}  {}{}",
                    i.lun,
                    i.vendor,
                    i.product,
                    i.revision,
                    if i.blocks == 0 && i.device_type == 0 {
                        "capacity unknown through this port (its ALUA state refuses READ CAPACITY)"
                            .to_string()
                    } else {
                        format!(
                            "{} ({} x {} B)",
                            human(i.blocks * i.block_size as u64),
                            i.blocks,
                            i.block_size
                        )
                    },
                    if i.thin { "  thin" } else { "" }
                );
                println!(
                    "        WWID {}  serial {}",
                    i.wwid.as_deref().unwrap_or("-"),
                    i.serial.as_deref().unwrap_or("-")
                );
                match (i.target_port_group, i.alua) {
                    (Some(g), Some((st, pref))) => println!(
                        "        ALUA group {g} {}{}  (relative port {})",
                        probe::alua_name(st),
                        if pref { " preferred" } else { "" },
                        i.relative_target_port
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into())
                    ),
                    _ => println!("        no ALUA"),
                }
            }
            Err((lun, e)) => println!("  LUN {lun}  error: {e}"),
        }
    }
    Ok(())
}

/// Block contents that say where they belong: a misplaced or stale block cannot pass.
fn pattern(lba: u64, block_size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; block_size];
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v[..8].copy_from_slice(&lba.to_be_bytes());
    v
}

#[allow(clippy::too_many_arguments)]
async fn io_cmd(
    p: &str,
    target: &str,
    lun: u16,
    verify: bool,
    size: u64,
    bs: u64,
    depth: usize,
    c: &IscsiCommon,
) -> Result<()> {
    let p = portal(p)?;
    let s = Session::open(session_config(p, target, c)?).await?;
    let path = IscsiPath::new(s.clone(), lun, RetryPolicy::default());
    let info = probe::probe_lu(&path).await.context("probing the LU")?;
    if info.blocks == 0 {
        bail!(
            "LUN {lun} has no known capacity through {p}: this port does not serve it now \
             (ALUA {}); use a portal whose port group is active",
            info.alua
                .map_or("state unknown".to_string(), |(st, _)| st.to_string())
        );
    }
    let block = info.block_size as u64;
    if bs == 0 || !bs.is_multiple_of(block) {
        bail!("--bs {bs} is not a multiple of the LU's block size {block}");
    }
    let capacity = info.blocks * block;
    let size = size.min(capacity) / bs * bs;
    if size == 0 {
        bail!("nothing to do: --size is smaller than --bs, or the LU is empty");
    }
    let depth = depth.clamp(1, 1024);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let commands = size / bs;
    let blocks_per = (bs / block) as u32;
    let mut report = serde_json::Map::new();
    report.insert("size".into(), json!(size));
    report.insert("bs".into(), json!(bs));
    report.insert("depth".into(), json!(depth));
    if verify {
        let start = Instant::now();
        let mut inflight = futures_queue::Queue::new(depth);
        for i in 0..commands {
            let lba = i * bs / block;
            let mut data = Vec::with_capacity(bs as usize);
            for b in 0..blocks_per as u64 {
                data.extend_from_slice(&pattern(lba + b, block as usize, seed));
            }
            let req = ScsiRequest {
                cdb: Bytes::copy_from_slice(build::write_16(lba, blocks_per, false).as_bytes()),
                data: DataPhase::Out(Bytes::from(data)),
            };
            let path = path.clone();
            inflight
                .push(async move { path.command(req).await.map(|_| ()) })
                .await?;
        }
        inflight.drain().await?;
        let took = start.elapsed();
        print_rate("write", size, commands, took, c.json, &mut report);
    }
    let start = Instant::now();
    let mut mismatches = 0u64;
    let mut first_bad: Option<u64> = None;
    let mut inflight = futures_queue::Queue::new(depth);
    let mut check = |lba: u64, data: Bytes| {
        if !verify {
            return;
        }
        for (b, chunk) in data.chunks(block as usize).enumerate() {
            if chunk != pattern(lba + b as u64, block as usize, seed).as_slice() {
                mismatches += 1;
                first_bad.get_or_insert(lba + b as u64);
            }
        }
    };
    for i in 0..commands {
        let lba = i * bs / block;
        let req = ScsiRequest {
            cdb: Bytes::copy_from_slice(build::read_16(lba, blocks_per, false).as_bytes()),
            data: DataPhase::In { len: bs as u32 },
        };
        let path = path.clone();
        if let Some((l, d)) = inflight
            .push_collect(async move { path.command(req).await.map(|d| (lba, d)) })
            .await?
        {
            check(l, d);
        }
    }
    for (l, d) in inflight.drain_collect().await? {
        check(l, d);
    }
    let took = start.elapsed();
    print_rate("read", size, commands, took, c.json, &mut report);
    s.logout().await;
    if verify {
        let blocks = size / block;
        report.insert("blocks_verified".into(), json!(blocks));
        report.insert("mismatches".into(), json!(mismatches));
        if !c.json {
            if mismatches == 0 {
                println!("verify: {blocks} blocks, all match");
            } else {
                println!(
                    "verify: {mismatches} of {blocks} blocks differ (first at LBA {})",
                    first_bad.unwrap_or(0)
                );
            }
        }
    }
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?
        );
    }
    if mismatches > 0 {
        bail!("{mismatches} blocks read back differ from what was written");
    }
    Ok(())
}

fn print_rate(
    what: &str,
    bytes: u64,
    commands: u64,
    took: Duration,
    json: bool,
    report: &mut serde_json::Map<String, serde_json::Value>,
) {
    let secs = took.as_secs_f64().max(1e-9);
    let mbs = bytes as f64 / secs / 1e6;
    let iops = commands as f64 / secs;
    report.insert(
        what.into(),
        json!({"seconds": secs, "mb_per_s": mbs, "iops": iops}),
    );
    if !json {
        println!(
            "{what:<5} {} in {:.2} s: {:.1} MB/s, {:.0} IOPS",
            human(bytes),
            secs,
            mbs,
            iops
        );
    }
}

/// A bounded set of futures in flight: push waits for room.
mod futures_queue {
    use std::future::Future;

    use tokio::task::JoinSet;

    pub struct Queue<T> {
        set: JoinSet<Result<T, block::IoError>>,
        depth: usize,
    }

    impl<T: Send + 'static> Queue<T> {
        pub fn new(depth: usize) -> Self {
            Queue {
                set: JoinSet::new(),
                depth,
            }
        }

        /// Add a future; when the queue is full, first wait for one to finish and return
        /// its value.
        pub async fn push_collect(
            &mut self,
            f: impl Future<Output = Result<T, block::IoError>> + Send + 'static,
        ) -> anyhow::Result<Option<T>> {
            let mut done = None;
            if self.set.len() >= self.depth {
                done = self.next().await?;
            }
            self.set.spawn(f);
            Ok(done)
        }

        pub async fn push(
            &mut self,
            f: impl Future<Output = Result<T, block::IoError>> + Send + 'static,
        ) -> anyhow::Result<()> {
            self.push_collect(f).await.map(|_| ())
        }

        async fn next(&mut self) -> anyhow::Result<Option<T>> {
            match self.set.join_next().await {
                Some(Ok(Ok(v))) => Ok(Some(v)),
                Some(Ok(Err(e))) => Err(anyhow::anyhow!("I/O failed: {e}")),
                Some(Err(e)) => Err(anyhow::anyhow!("I/O task failed: {e}")),
                None => Ok(None),
            }
        }

        pub async fn drain_collect(&mut self) -> anyhow::Result<Vec<T>> {
            let mut v = Vec::new();
            while let Some(x) = self.next().await? {
                v.push(x);
            }
            Ok(v)
        }

        pub async fn drain(&mut self) -> anyhow::Result<()> {
            self.drain_collect().await.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_are_addresses_or_host_names() {
        assert_eq!(
            resolve_portal("127.0.0.2").unwrap(),
            "127.0.0.2:3260".parse().unwrap()
        );
        assert_eq!(
            resolve_portal("[::1]:3261").unwrap(),
            "[::1]:3261".parse().unwrap()
        );
        let a = resolve_portal("localhost:3262").unwrap();
        assert!(a.ip().is_loopback() && a.port() == 3262, "{a}");
        assert_eq!(resolve_portal("localhost").unwrap().port(), 3260);
        assert!(resolve_portal("localhost:x")
            .unwrap_err()
            .contains("\"x\" is not a port number"));
        assert!(resolve_portal("").is_err());
        assert!(resolve_portal("a host").is_err());
        assert!(resolve_portal("no-such-host.invalid")
            .unwrap_err()
            .contains("cannot resolve host \"no-such-host.invalid\""));
    }
}
