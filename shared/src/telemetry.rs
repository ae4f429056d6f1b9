//! Device reports: heartbeat, inventory, metrics and events, version 1.
//!
//! Every report travels on `wg.<account>.up.<device>.tel.<kind>` (see [`Kind::token`]) as a JSON
//! object with `"v": 1`, with a `Nats-Msg-Id` header of [`message_id`] so a replayed report is
//! stored once. Readers ignore unknown fields; a reader meeting a higher `v` than it knows
//! should keep the raw report and not interpret it. `docs/PROTOCOL.md` has an example of each.

use serde::{Deserialize, Serialize};

/// The schema version this crate writes.
pub const VERSION: u32 = 1;
/// Subject token before the kind: `wg.<account>.up.<device>.tel.<kind>`.
pub const TELEMETRY_TOKEN: &str = "tel";
/// Largest report the agent sends (inventories of machines with much software are the biggest).
pub const MAX_REPORT_BYTES: usize = 512 * 1024;

/// The kinds of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// [`Heartbeat`].
    Heartbeat,
    /// [`Inventory`].
    Inventory,
    /// [`Metrics`].
    Metrics,
    /// [`Event`].
    Event,
    /// [`crate::command::CommandResult`].
    Result,
}

impl Kind {
    /// The subject token of this kind.
    pub fn token(self) -> &'static str {
        match self {
            Self::Heartbeat => "hb",
            Self::Inventory => "inv",
            Self::Metrics => "met",
            Self::Event => "evt",
            Self::Result => "res",
        }
    }

    /// The kind of a subject token.
    pub fn from_token(t: &str) -> Option<Self> {
        Some(match t {
            "hb" => Self::Heartbeat,
            "inv" => Self::Inventory,
            "met" => Self::Metrics,
            "evt" => Self::Event,
            "res" => Self::Result,
            _ => return None,
        })
    }
}

/// The `Nats-Msg-Id` of a report: device id and the agent's report sequence, unique across
/// tenants because device ids are random 125-bit values.
pub fn message_id(device: &crate::ids::DeviceId, seq: u64) -> String {
    format!("{device}-{seq}")
}

/// Liveness, sent every `heartbeat` interval (default 30 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Schema version.
    pub v: u32,
    /// Report sequence of the agent.
    pub seq: u64,
    /// Unix seconds, device clock.
    pub ts: i64,
    /// Agent version.
    pub agent_version: String,
    /// Expiry of the device's current JWT.
    pub jwt_expires_at: i64,
    /// Reports waiting in the offline spool.
    #[serde(default)]
    pub spool_depth: u64,
    /// Version of the command keyset the agent trusts (absent before it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset_version: Option<u64>,
    /// Commands refused since the agent started.
    #[serde(default)]
    pub commands_rejected: u64,
}

/// A disk (or mount).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// Mount point (`/`, `C:\`).
    pub mount: String,
    /// File system.
    #[serde(default)]
    pub fs: String,
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Removable medium.
    #[serde(default)]
    pub removable: bool,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: String,
    /// IP addresses with prefix length (`192.0.2.5/24`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// An installed software package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    /// Name.
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Publisher or vendor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub publisher: String,
    /// Where it was found (`dpkg`, `rpm`, `registry`).
    pub source: String,
}

/// What the device is: sent at start, on change and every 24 h.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Schema version.
    pub v: u32,
    /// Report sequence.
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    /// Host name.
    pub hostname: String,
    /// OS family (`linux`, `windows`).
    pub os: String,
    /// OS name and version.
    pub os_version: String,
    /// Kernel version.
    #[serde(default)]
    pub kernel: String,
    /// CPU architecture.
    pub arch: String,
    /// Stable machine id.
    pub machine_id: String,
    /// Boot time, unix seconds.
    pub boot_time: i64,
    /// CPU model.
    #[serde(default)]
    pub cpu_model: String,
    /// Logical cores.
    pub cpu_cores: u32,
    /// CPU frequency, MHz.
    #[serde(default)]
    pub cpu_mhz: u64,
    /// Memory, bytes.
    pub memory_total: u64,
    /// Swap, bytes.
    #[serde(default)]
    pub swap_total: u64,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Network interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Installed software.
    #[serde(default)]
    pub software: Vec<Software>,
    /// Agent version.
    pub agent_version: String,
}

/// A process in a top list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Name.
    pub name: String,
    /// CPU use, percent of one core.
    pub cpu: f32,
    /// Resident memory, bytes.
    pub memory: u64,
}

/// Per-mount usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Mount point.
    pub mount: String,
    /// Used bytes.
    pub used: u64,
    /// Free bytes.
    pub free: u64,
}

/// Per-interface throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRate {
    /// Interface.
    pub name: String,
    /// Received bytes per second.
    pub rx_bps: u64,
    /// Sent bytes per second.
    pub tx_bps: u64,
}

/// How the device is doing: sent every `metrics` interval (default 60 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Schema version.
    pub v: u32,
    /// Report sequence.
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    /// CPU use, percent of all cores.
    pub cpu: f32,
    /// CPU use per core, percent.
    #[serde(default)]
    pub cpu_per_core: Vec<f32>,
    /// Load average 1, 5, 15 minutes (Unix only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<[f64; 3]>,
    /// Memory used, bytes.
    pub memory_used: u64,
    /// Memory available, bytes.
    pub memory_available: u64,
    /// Swap used, bytes.
    #[serde(default)]
    pub swap_used: u64,
    /// Disk usage per mount.
    #[serde(default)]
    pub disks: Vec<DiskUsage>,
    /// Network throughput per interface.
    #[serde(default)]
    pub network: Vec<NetRate>,
    /// Processes.
    pub process_count: u32,
    /// Top 5 by CPU.
    #[serde(default)]
    pub top_cpu: Vec<Process>,
    /// Top 5 by memory.
    #[serde(default)]
    pub top_memory: Vec<Process>,
    /// Seconds since boot.
    pub uptime: u64,
}

/// Something that happened on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Schema version.
    pub v: u32,
    /// Report sequence.
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
}

/// The events agents report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The agent started.
    AgentStart {
        /// Agent version.
        agent_version: String,
    },
    /// The agent is stopping.
    AgentStop {
        /// Why (`signal`, `service`, `reenroll`).
        reason: String,
    },
    /// The offline spool was full and dropped its oldest reports.
    SpoolOverflow {
        /// Reports dropped.
        dropped: u64,
    },
    /// The spool set aside a damaged segment.
    SpoolCorrupt {
        /// Records that could not be read.
        file: String,
    },
    /// A collector failed.
    CollectionError {
        /// Which collector.
        collector: String,
        /// What went wrong.
        message: String,
    },
    /// A command was refused (a security event).
    CommandRejected {
        /// The reason code ([`crate::command::Reject::code`]).
        reason: String,
        /// Detail for people.
        detail: String,
        /// The command id, when its signature verified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_id: Option<String>,
    },
    /// Trust material (root or keyset) was refused (a security event).
    TrustRejected {
        /// The reason code ([`crate::trust::TrustError::code`]).
        reason: String,
        /// Detail for people.
        detail: String,
    },
    /// The agent moved to a newer root or keyset.
    TrustUpdated {
        /// Root version now trusted.
        root_version: u64,
        /// Keyset version now trusted.
        keyset_version: u64,
    },
    /// An event kind this reader does not know (newer agent).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_subject_tokens_and_back() {
        for k in [
            Kind::Heartbeat,
            Kind::Inventory,
            Kind::Metrics,
            Kind::Event,
            Kind::Result,
        ] {
            assert_eq!(Kind::from_token(k.token()), Some(k));
        }
        assert_eq!(Kind::from_token("renew"), None);
    }

    #[test]
    fn readers_tolerate_unknown_fields_and_events() {
        let hb: Heartbeat = serde_json::from_str(
            r#"{"v":1,"seq":7,"ts":1,"agent_version":"0.1.0","jwt_expires_at":9,"future":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(hb.seq, 7);
        assert_eq!(hb.spool_depth, 0);
        let ev: Event =
            serde_json::from_str(r#"{"v":1,"seq":1,"ts":2,"event":"disk_on_fire","where":"/"}"#)
                .unwrap();
        assert_eq!(ev.what, EventKind::Unknown);
        let ev = Event {
            v: VERSION,
            seq: 3,
            ts: 4,
            what: EventKind::SpoolOverflow { dropped: 12 },
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["event"], "spool_overflow");
        assert_eq!(json["dropped"], 12);
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), ev);
    }

    #[test]
    fn message_ids_name_the_device() {
        let d: crate::ids::DeviceId = "dabc".parse().unwrap();
        assert_eq!(message_id(&d, 42), "dabc-42");
    }
}
