//! `mpath persist`: persistent reservations through a map, as `mpathpersist` makes them
//! (keys registered on every path of the map; see `mpathd::persist`).

use anyhow::Result;
use clap::{Args, Subcommand};
use mpathd::persist::{parse_key, parse_type, PersistOp};
use mpathd::Request;

use crate::ClientOpts;

#[derive(Args)]
pub struct PersistCmd {
    /// The map (its name, as `mpath show maps` gives it).
    map: String,
    #[command(subcommand)]
    op: PersistWhat,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

/// Keys are hex (0x optional), as mpathpersist takes them; TYPE is we, ea, we-ro, ea-ro,
/// we-ar, ea-ar (or 1, 3, 5, 6, 7, 8). Without --key, the key the map registered.
#[derive(Subcommand)]
enum PersistWhat {
    /// The registered keys (PR IN READ KEYS).
    Keys,
    /// The reservation, if any (PR IN READ RESERVATION).
    Reservation,
    /// What the LU supports (PR IN REPORT CAPABILITIES).
    Capabilities,
    /// Register KEY on every path of the map; paths that are down, or join later, are
    /// registered when they come.
    Register {
        #[arg(value_parser = parse_key)]
        key: u64,
        /// Replace whatever key each path has (REGISTER AND IGNORE EXISTING KEY).
        #[arg(long)]
        ignore_existing: bool,
        /// The key registered now, when the daemon does not know it (after a restart).
        #[arg(long, value_parser = parse_key, value_name = "KEY")]
        old: Option<u64>,
        /// Keep the registrations across a power loss of the target (APTPL).
        #[arg(long)]
        aptpl: bool,
    },
    /// Remove the map's registration from every path.
    Unregister {
        /// The key registered now, when the daemon does not know it.
        #[arg(long, value_parser = parse_key, value_name = "KEY")]
        old: Option<u64>,
    },
    /// Reserve the LU (use we-ro or ea-ro: a reservation every registered path holds
    /// survives a failover).
    Reserve {
        #[arg(value_parser = parse_type, value_name = "TYPE")]
        pr_type: u8,
        #[arg(long, value_parser = parse_key)]
        key: Option<u64>,
    },
    /// Release the reservation (sent on every path: one of them holds it).
    Release {
        #[arg(value_parser = parse_type, value_name = "TYPE")]
        pr_type: u8,
        #[arg(long, value_parser = parse_key)]
        key: Option<u64>,
    },
    /// Remove every registration and the reservation.
    Clear {
        #[arg(long, value_parser = parse_key)]
        key: Option<u64>,
    },
    /// Take away VICTIM's registrations (and its reservation, given to us with TYPE).
    Preempt {
        #[arg(value_parser = parse_key)]
        victim: u64,
        #[arg(value_parser = parse_type, value_name = "TYPE")]
        pr_type: u8,
        #[arg(long, value_parser = parse_key)]
        key: Option<u64>,
        /// Also abort the victim's outstanding commands (PREEMPT AND ABORT).
        #[arg(long)]
        abort: bool,
    },
}

pub async fn run(c: PersistCmd) -> Result<()> {
    let op = match c.op {
        PersistWhat::Keys => PersistOp::ReadKeys,
        PersistWhat::Reservation => PersistOp::ReadReservation,
        PersistWhat::Capabilities => PersistOp::Capabilities,
        PersistWhat::Register {
            key,
            ignore_existing,
            old,
            aptpl,
        } => PersistOp::Register {
            old,
            key,
            ignore_existing,
            aptpl,
        },
        PersistWhat::Unregister { old } => PersistOp::Register {
            old,
            key: 0,
            ignore_existing: false,
            aptpl: false,
        },
        PersistWhat::Reserve { pr_type, key } => PersistOp::Reserve { key, pr_type },
        PersistWhat::Release { pr_type, key } => PersistOp::Release { key, pr_type },
        PersistWhat::Clear { key } => PersistOp::Clear { key },
        PersistWhat::Preempt {
            victim,
            pr_type,
            key,
            abort,
        } => PersistOp::Preempt {
            key,
            victim,
            pr_type,
            abort,
        },
    };
    let client = ClientOpts {
        socket: c.socket,
        json: c.json,
    };
    crate::daemon_cmd::call(&client, Request::Persist { map: c.map, op }).await
}
