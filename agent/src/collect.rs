//! Collectors: what the device is ([`Collector::inventory`]) and how it is doing
//! ([`Collector::metrics`]), built on `sysinfo` (no `unsafe` here; sysinfo does the OS calls).
//!
//! | what | Linux | Windows |
//! |---|---|---|
//! | hostname, os_version, machine_id | [`crate::facts`] (same values as at enrollment), sysinfo as fallback | same |
//! | CPU use (total) | sysinfo (`/proc/stat`) | `GetSystemTimes` deltas ([`cpu_use`]) |
//! | CPU use per core | sysinfo | **not reported** (empty `cpu_per_core`) |
//! | CPU model, cores, MHz | sysinfo | registry `CentralProcessor\0` (`ProcessorNameString`, `~MHz`), logical processors |
//! | memory, disks, interfaces, processes | sysinfo | sysinfo |
//! | software | `/var/lib/dpkg/status`; `rpm -qa` when `rpm` and `/var/lib/rpm` exist | `reg query /s` of the `Uninstall` keys |
//!
//! Both calls block (files, `/proc`, child processes): from async code run them in
//! `spawn_blocking`. A failing collector never fails the report: it yields a [`CollectError`]
//! (for the `collection_error` event) and the rest is still filled.
//!
//! CPU use needs two samples spaced apart: the first [`Collector::metrics`] call returns 0 for
//! CPU (and for network rates); the agent takes metrics every 60 s, so from the second report on
//! the values are averages over the interval.
//!
//! On Windows sysinfo's CPU refresh goes through PDH (performance counters), and re-enumerates
//! them with `PdhEnumObjects` when a counter is missing; Wine has no such function (calling it
//! kills the process), and PDH is slow and locale-sensitive on real Windows too. So on Windows
//! the agent never refreshes sysinfo's CPUs: total use comes from `GetSystemTimes` (busy =
//! kernel + user − idle, over the interval), the model and clock from the registry, and per-core
//! use is left empty. Elsewhere a panic inside sysinfo's CPU refresh gives 0 and one CPU
//! [`CollectError`] (see [`Collector::take_errors`]) instead of bringing the agent down.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind, ProcessesToUpdate,
    System, ThreadKind,
};
use wegweiser_shared::telemetry::{
    self, Disk, DiskUsage, EventKind, Interface, Inventory, Metrics, NetRate, Process, Software,
};

/// Most software packages in one inventory (the rest is dropped with a [`CollectError`]).
pub const MAX_SOFTWARE: usize = 20_000;
/// Processes in each top list of [`Metrics`].
pub const TOP_PROCESSES: usize = 5;

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
const RPM_DBS: [&str; 2] = ["/var/lib/rpm", "/usr/lib/sysimage/rpm"];
const RPM_QUERY_FORMAT: &str = "%{NAME}\t%{VERSION}-%{RELEASE}\t%{VENDOR}\n";
const CPU_KEY: &str = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0";
const UNINSTALL_KEYS: [&str; 2] = [
    r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall",
    r"HKLM\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall",
];

/// A collector that failed; the report it belonged to is still sent without its part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("collector {collector}: {message}")]
pub struct CollectError {
    /// Which collector (`software`, `cpu`, `machine_id`, …).
    pub collector: String,
    /// What went wrong.
    pub message: String,
}

impl CollectError {
    fn new(collector: &str, message: impl Into<String>) -> Self {
        Self {
            collector: collector.to_owned(),
            message: message.into(),
        }
    }

    /// The `collection_error` event reporting this.
    pub fn to_event(&self) -> EventKind {
        EventKind::CollectionError {
            collector: self.collector.clone(),
            message: self.message.clone(),
        }
    }
}

/// Holds the sysinfo state between calls, so CPU use and network rates are deltas.
pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
    /// Interface counters (total rx, total tx) at the previous [`Collector::metrics`] call.
    net_prev: HashMap<String, (u64, u64)>,
    net_prev_at: Option<Instant>,
    /// CPU collection panicked once: do not try again (0 from then on).
    cpu_broken: bool,
    /// The CPU failure was already reported.
    cpu_reported: bool,
    /// Windows: `GetSystemTimes` (idle, kernel, user) at the previous metrics call.
    cpu_times_prev: Option<(u64, u64, u64)>,
    errors: Vec<CollectError>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("cpus", &self.system.cpus().len())
            .field("disks", &self.disks.list().len())
            .field("networks", &self.networks.list().len())
            .field("cpu_broken", &self.cpu_broken)
            .finish_non_exhaustive()
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// An empty collector; nothing is read until the first call.
    pub fn new() -> Self {
        Self {
            system: System::new(),
            disks: Disks::new(),
            networks: Networks::new(),
            net_prev: HashMap::new(),
            net_prev_at: None,
            cpu_broken: false,
            cpu_reported: false,
            cpu_times_prev: None,
            errors: Vec::new(),
        }
    }

    /// Errors of [`Collector::metrics`] calls since the last call (a metrics report has no room
    /// for them; send them as `collection_error` events). Each failure is reported once.
    pub fn take_errors(&mut self) -> Vec<CollectError> {
        std::mem::take(&mut self.errors)
    }

    /// Refreshes CPU data with `kind`, catching a panic inside sysinfo. Never on Windows (PDH,
    /// see the module docs).
    fn refresh_cpu(&mut self, kind: CpuRefreshKind) {
        if self.cpu_broken || cfg!(windows) {
            return;
        }
        let system = &mut self.system;
        let outcome = catch_unwind(AssertUnwindSafe(|| system.refresh_cpu_specifics(kind)));
        let problem = match outcome {
            Err(panic) => {
                self.cpu_broken = true;
                Some(format!("CPU refresh panicked: {}", panic_message(&*panic)))
            }
            Ok(()) if self.system.cpus().is_empty() => Some("no CPU data".to_owned()),
            Ok(()) => None,
        };
        if let Some(message) = problem
            && !self.cpu_reported
        {
            self.cpu_reported = true;
            self.errors.push(CollectError::new("cpu", message));
        }
    }

    /// What the device is. `seq`, `ts` and `agent_version` go into the report as given.
    pub fn inventory(
        &mut self,
        seq: u64,
        ts: i64,
        agent_version: &str,
    ) -> (Inventory, Vec<CollectError>) {
        let facts = crate::facts::collect(None);
        self.refresh_cpu(CpuRefreshKind::nothing().with_frequency());
        let mut errors = self.take_errors();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        self.disks.refresh(true);
        self.networks.refresh(true);

        let hostname = nonempty(facts.hostname)
            .or_else(System::host_name)
            .unwrap_or_default();
        if hostname.is_empty() {
            errors.push(CollectError::new("hostname", "no host name found"));
        }
        let machine_id = facts.machine_id;
        if machine_id.is_empty() {
            errors.push(CollectError::new("machine_id", "no machine id found"));
        }
        let os_version = nonempty(facts.os_version)
            .or_else(System::long_os_version)
            .unwrap_or_default();

        let cpus = self.system.cpus();
        let cpu_model = if cfg!(windows) {
            crate::platform::registry_string(CPU_KEY, "ProcessorNameString").unwrap_or_default()
        } else {
            cpus.first()
                .map(|c| c.brand().trim().to_owned())
                .unwrap_or_default()
        };
        let cpu_cores = if cpus.is_empty() {
            std::thread::available_parallelism().map_or(0, |n| n.get())
        } else {
            cpus.len()
        };
        let cpu_mhz = if cfg!(windows) {
            crate::platform::registry_dword(CPU_KEY, "~MHz").map_or(0, u64::from)
        } else {
            cpus.iter().map(|c| c.frequency()).max().unwrap_or(0)
        };

        let (software, software_errors) = collect_software();
        errors.extend(software_errors);

        let inventory = Inventory {
            v: telemetry::VERSION,
            seq,
            ts,
            hostname,
            os: std::env::consts::OS.to_owned(),
            os_version,
            kernel: System::kernel_version().unwrap_or_default(),
            arch: std::env::consts::ARCH.to_owned(),
            machine_id,
            boot_time: i64::try_from(System::boot_time()).unwrap_or(0),
            cpu_model,
            cpu_cores: u32::try_from(cpu_cores).unwrap_or(u32::MAX),
            cpu_mhz,
            memory_total: self.system.total_memory(),
            swap_total: self.system.total_swap(),
            disks: self.inventory_disks(),
            interfaces: self.inventory_interfaces(),
            software,
            agent_version: agent_version.to_owned(),
        };
        (inventory, errors)
    }

    fn inventory_disks(&self) -> Vec<Disk> {
        let mut disks: Vec<Disk> = Vec::new();
        for d in self.disks.list() {
            let mount = d.mount_point().to_string_lossy().into_owned();
            if disks.iter().any(|x| x.mount == mount) {
                continue;
            }
            disks.push(Disk {
                mount,
                fs: d.file_system().to_string_lossy().into_owned(),
                total: d.total_space(),
                free: d.available_space(),
                removable: d.is_removable(),
            });
        }
        disks.sort_by(|a, b| a.mount.cmp(&b.mount));
        disks
    }

    fn inventory_interfaces(&self) -> Vec<Interface> {
        let mut interfaces: Vec<Interface> = self
            .networks
            .list()
            .iter()
            .map(|(name, data)| {
                let mac = data.mac_address();
                let addresses: BTreeSet<String> =
                    data.ip_networks().iter().map(|n| n.to_string()).collect();
                Interface {
                    name: name.clone(),
                    mac: if mac.is_unspecified() {
                        String::new()
                    } else {
                        mac.to_string()
                    },
                    addresses: addresses.into_iter().collect(),
                }
            })
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        interfaces
    }

    /// How the device is doing. CPU use and network rates are averages since the previous call
    /// (0 on the first call); everything else is the current value. Errors (a broken CPU
    /// collector) wait in [`Collector::take_errors`].
    pub fn metrics(&mut self, seq: u64, ts: i64) -> Metrics {
        self.refresh_cpu(CpuRefreshKind::nothing().with_cpu_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        self.disks.refresh(true);
        self.networks.refresh(true);

        let (cpu, cpu_per_core) = if cfg!(windows) {
            (self.windows_cpu(), Vec::new())
        } else if self.cpu_broken {
            (0.0, Vec::new())
        } else {
            let per_core: Vec<f32> = self.system.cpus().iter().map(|c| c.cpu_usage()).collect();
            (finite(self.system.global_cpu_usage()), per_core)
        };
        let load = if cfg!(unix) {
            let l = System::load_average();
            Some([l.one, l.five, l.fifteen])
        } else {
            None
        };

        let processes: Vec<Process> = self
            .system
            .processes()
            .values()
            .filter(|p| p.thread_kind() != Some(ThreadKind::Userland))
            .map(|p| Process {
                pid: p.pid().as_u32(),
                name: p.name().to_string_lossy().into_owned(),
                cpu: finite(p.cpu_usage()),
                memory: p.memory(),
            })
            .collect();
        let (top_cpu, top_memory) = top_processes(&processes);

        let mut disks: Vec<DiskUsage> = Vec::new();
        for d in self.disks.list() {
            let mount = d.mount_point().to_string_lossy().into_owned();
            if disks.iter().any(|x| x.mount == mount) {
                continue;
            }
            let free = d.available_space();
            disks.push(DiskUsage {
                mount,
                used: d.total_space().saturating_sub(free),
                free,
            });
        }
        disks.sort_by(|a, b| a.mount.cmp(&b.mount));

        Metrics {
            v: telemetry::VERSION,
            seq,
            ts,
            cpu,
            cpu_per_core: cpu_per_core.into_iter().map(finite).collect(),
            load,
            memory_used: self.system.used_memory(),
            memory_available: self.system.available_memory(),
            swap_used: self.system.used_swap(),
            disks,
            network: self.network_rates(),
            process_count: u32::try_from(processes.len()).unwrap_or(u32::MAX),
            top_cpu,
            top_memory,
            uptime: System::uptime(),
        }
    }

    /// Total CPU use since the previous call from `GetSystemTimes` (0 on the first call, and when
    /// the call fails: reported once as a CPU [`CollectError`]).
    fn windows_cpu(&mut self) -> f32 {
        let Some(now) = crate::platform::cpu_times() else {
            if !self.cpu_reported {
                self.cpu_reported = true;
                self.errors
                    .push(CollectError::new("cpu", "GetSystemTimes failed"));
            }
            return 0.0;
        };
        let used = self.cpu_times_prev.map_or(0.0, |prev| cpu_use(prev, now));
        self.cpu_times_prev = Some(now);
        used
    }

    /// Bytes per second per interface since the previous call (0 on the first).
    fn network_rates(&mut self) -> Vec<NetRate> {
        let now = Instant::now();
        let elapsed = self
            .net_prev_at
            .map(|t| now.duration_since(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        let mut current = HashMap::new();
        let mut rates: Vec<NetRate> = self
            .networks
            .list()
            .iter()
            .map(|(name, data)| {
                let now_counts = (data.total_received(), data.total_transmitted());
                current.insert(name.clone(), now_counts);
                let (rx_bps, tx_bps) = match (elapsed, self.net_prev.get(name)) {
                    (Some(secs), Some(prev)) => (
                        rate(prev.0, now_counts.0, secs),
                        rate(prev.1, now_counts.1, secs),
                    ),
                    _ => (0, 0),
                };
                NetRate {
                    name: name.clone(),
                    rx_bps,
                    tx_bps,
                }
            })
            .collect();
        rates.sort_by(|a, b| a.name.cmp(&b.name));
        self.net_prev = current;
        self.net_prev_at = Some(now);
        rates
    }
}

/// A hash of what the inventory says about the device, leaving out `seq`, `ts` and what moves
/// on its own (free space, current CPU frequency, boot time jitter): send the inventory when this
/// changes. FNV-1a over the JSON of a normalized copy, so the value is the same across runs and
/// agent builds with the same schema (it may be stored).
pub fn inventory_fingerprint(inv: &Inventory) -> u64 {
    let mut n = inv.clone();
    n.seq = 0;
    n.ts = 0;
    n.boot_time = 0;
    n.cpu_mhz = 0;
    for d in &mut n.disks {
        d.free = 0;
    }
    n.disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    for i in &mut n.interfaces {
        i.addresses.sort();
    }
    n.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    n.software
        .sort_by(|a, b| (&a.name, &a.version, &a.source).cmp(&(&b.name, &b.version, &b.source)));
    let bytes = serde_json::to_vec(&n).unwrap_or_else(|_| format!("{n:?}").into_bytes());
    fnv1a(&bytes)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn nonempty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn finite(x: f32) -> f32 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// Total CPU use in percent between two `GetSystemTimes` samples (idle, kernel including idle,
/// user): busy time over all time. 0 when no time passed or a counter went back.
pub fn cpu_use(before: (u64, u64, u64), after: (u64, u64, u64)) -> f32 {
    let idle = after.0.checked_sub(before.0);
    let kernel = after.1.checked_sub(before.1);
    let user = after.2.checked_sub(before.2);
    let (Some(idle), Some(kernel), Some(user)) = (idle, kernel, user) else {
        return 0.0;
    };
    let total = kernel.saturating_add(user);
    if total == 0 {
        return 0.0;
    }
    let busy = total.saturating_sub(idle);
    finite((busy as f64 / total as f64 * 100.0) as f32).min(100.0)
}

fn rate(before: u64, after: u64, secs: f64) -> u64 {
    // A counter that went back (interface reset) gives 0 for this interval.
    let delta = after.saturating_sub(before) as f64;
    (delta / secs).round() as u64
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// The `limit` processes using the most CPU right now (ties by memory): two samples
/// [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] apart, so CPU use is measured, not 0. Blocking.
pub fn processes_by_cpu(limit: usize) -> Vec<Process> {
    let mut system = System::new();
    let kind = ProcessRefreshKind::nothing().with_cpu().with_memory();
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    let mut list: Vec<Process> = system
        .processes()
        .values()
        .filter(|p| p.thread_kind() != Some(ThreadKind::Userland))
        .map(|p| Process {
            pid: p.pid().as_u32(),
            name: p.name().to_string_lossy().into_owned(),
            cpu: finite(p.cpu_usage()),
            memory: p.memory(),
        })
        .collect();
    list.sort_by(|a, b| b.cpu.total_cmp(&a.cpu).then(b.memory.cmp(&a.memory)));
    list.truncate(limit);
    list
}

/// The top [`TOP_PROCESSES`] by CPU and by memory.
fn top_processes(processes: &[Process]) -> (Vec<Process>, Vec<Process>) {
    let mut by_cpu = processes.to_vec();
    by_cpu.sort_by(|a, b| b.cpu.total_cmp(&a.cpu).then(b.memory.cmp(&a.memory)));
    by_cpu.truncate(TOP_PROCESSES);
    let mut by_memory = processes.to_vec();
    by_memory.sort_by(|a, b| b.memory.cmp(&a.memory).then(b.cpu.total_cmp(&a.cpu)));
    by_memory.truncate(TOP_PROCESSES);
    (by_cpu, by_memory)
}

// ---------------------------------------------------------------------------------------------
// Installed software.

/// Installed software of this machine, sorted by name, at most [`MAX_SOFTWARE`].
fn collect_software() -> (Vec<Software>, Vec<CollectError>) {
    let mut software = Vec::new();
    let mut errors = Vec::new();
    if cfg!(windows) {
        windows_software(&mut software, &mut errors);
    } else {
        if Path::new(DPKG_STATUS).exists() {
            match std::fs::read_to_string(DPKG_STATUS) {
                Ok(text) => software.extend(parse_dpkg_status(&text, MAX_SOFTWARE)),
                Err(e) => errors.push(CollectError::new(
                    "software",
                    format!("dpkg status {DPKG_STATUS} unreadable: {e}"),
                )),
            }
        }
        if rpm_available() {
            match run(
                "rpm",
                &["-qa", "--qf", RPM_QUERY_FORMAT],
                "rpm -qa",
                "software",
            ) {
                Ok(out) => software.extend(parse_rpm_output(&out, MAX_SOFTWARE)),
                Err(e) => errors.push(e),
            }
        }
    }
    software
        .sort_by(|a, b| (&a.name, &a.version, &a.source).cmp(&(&b.name, &b.version, &b.source)));
    software.dedup();
    if software.len() > MAX_SOFTWARE {
        errors.push(CollectError::new(
            "software",
            format!(
                "{} packages found; only the first {MAX_SOFTWARE} are reported",
                software.len()
            ),
        ));
        software.truncate(MAX_SOFTWARE);
    }
    (software, errors)
}

fn windows_software(software: &mut Vec<Software>, errors: &mut Vec<CollectError>) {
    for (i, key) in UNINSTALL_KEYS.iter().enumerate() {
        match run("reg", &["query", key, "/s"], "reg query", "software") {
            Ok(out) => software.extend(parse_reg_uninstall(&out)),
            // The WOW6432Node key is missing on 32-bit Windows: only the first one must work.
            Err(e) if i == 0 => errors.push(e),
            Err(_) => {}
        }
    }
}

fn rpm_available() -> bool {
    RPM_DBS.iter().any(|d| Path::new(d).exists())
        && std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("rpm").is_file()))
}

/// Runs `program` and returns its standard output, or the error of `collector`.
fn run(program: &str, args: &[&str], what: &str, collector: &str) -> Result<String, CollectError> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CollectError::new(collector, format!("{what} could not run: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(CollectError::new(
            collector,
            format!("{what} failed ({}): {first}", out.status),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installed packages (`Status: … installed`) of a dpkg `status` database, at most `cap`.
/// The publisher is the maintainer's name without the e-mail address.
pub fn parse_dpkg_status(text: &str, cap: usize) -> Vec<Software> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        if out.len() >= cap {
            break;
        }
        let (mut name, mut version, mut maintainer, mut installed) = ("", "", "", false);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue; // continuation of a multi-line field
            }
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match field {
                "Package" => name = value,
                "Version" => version = value,
                "Maintainer" => maintainer = value,
                "Status" => {
                    installed = value.split_whitespace().nth(2) == Some("installed");
                }
                _ => {}
            }
        }
        if installed && !name.is_empty() {
            out.push(Software {
                name: name.to_owned(),
                version: version.to_owned(),
                publisher: maintainer_name(maintainer),
                source: "dpkg".to_owned(),
            });
        }
    }
    out
}

/// `Jane Doe <jane@example.org>` → `Jane Doe`.
fn maintainer_name(m: &str) -> String {
    let name = m.split_once('<').map_or(m, |(n, _)| n).trim();
    if name.is_empty() { m.trim() } else { name }.to_owned()
}

/// `rpm -qa --qf '%{NAME}\t%{VERSION}-%{RELEASE}\t%{VENDOR}\n'` output, at most `cap`.
pub fn parse_rpm_output(text: &str, cap: usize) -> Vec<Software> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim_end_matches('\r').split('\t');
            let name = parts.next()?.trim();
            if name.is_empty() {
                return None;
            }
            let version = parts.next().unwrap_or("").trim();
            let vendor = parts.next().unwrap_or("").trim();
            Some(Software {
                name: name.to_owned(),
                version: version.to_owned(),
                publisher: if vendor == "(none)" {
                    String::new()
                } else {
                    vendor.to_owned()
                },
                source: "rpm".to_owned(),
            })
        })
        .take(cap)
        .collect()
}

/// Programs in `reg query <Uninstall key> /s` output: keys with a `DisplayName`, without
/// `SystemComponent = 1` and without `ParentKeyName` (updates of another entry).
pub fn parse_reg_uninstall(text: &str) -> Vec<Software> {
    #[derive(Default)]
    struct Entry {
        name: String,
        version: String,
        publisher: String,
        hidden: bool,
    }
    fn finish(entry: Entry, out: &mut Vec<Software>) {
        if !entry.hidden && !entry.name.is_empty() {
            out.push(Software {
                name: entry.name,
                version: entry.version,
                publisher: entry.publisher,
                source: "registry".to_owned(),
            });
        }
    }

    let mut out = Vec::new();
    let mut entry: Option<Entry> = None;
    for line in text.lines() {
        let line = line.trim_end_matches(['\r', ' ']);
        if line.starts_with("HKEY_") {
            if let Some(e) = entry.take() {
                finish(e, &mut out);
            }
            entry = Some(Entry::default());
            continue;
        }
        let (Some(e), Some((name, kind, data))) = (entry.as_mut(), reg_value(line)) else {
            continue;
        };
        match name {
            "DisplayName" => e.name = data.to_owned(),
            "DisplayVersion" => e.version = data.to_owned(),
            "Publisher" => e.publisher = data.to_owned(),
            "SystemComponent" if kind == "REG_DWORD" => e.hidden |= data == "0x1",
            "ParentKeyName" => e.hidden = true,
            _ => {}
        }
    }
    if let Some(e) = entry {
        finish(e, &mut out);
    }
    out
}

/// `    <name>    REG_<type>    <data>` → (name, type, data); data may be empty.
fn reg_value(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("    ")?;
    let at = rest.find("    REG_")?;
    let name = rest[..at].trim();
    let after = &rest[at + 4..];
    let (kind, data) = after.split_once("    ").unwrap_or((after, ""));
    Some((name, kind.trim(), data.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DPKG: &str = "\
Package: openssl
Status: install ok installed
Priority: optional
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Version: 3.0.15-1~deb12u1
Description: Secure Sockets Layer toolkit
 This package contains the openssl binary.
 .
 Status: not a field

Package: old-tool
Status: deinstall ok config-files
Maintainer: Someone <s@example.org>
Version: 1.0

Package: held
Status: hold ok installed
Version: 2:1.2-3
Maintainer: Team Only

Package: half
Status: install ok half-installed
Version: 0.1
";

    #[test]
    fn cpu_use_from_system_times() {
        // 1000 units passed on each of kernel (250 of them idle) and user: 1750 busy of 2000.
        assert_eq!(cpu_use((100, 200, 300), (350, 1200, 1300)), 87.5);
        assert_eq!(cpu_use((0, 0, 0), (0, 0, 0)), 0.0);
        // All idle.
        assert_eq!(cpu_use((0, 0, 0), (500, 500, 0)), 0.0);
        // A counter that went back gives 0, never a negative or huge value.
        assert_eq!(cpu_use((10, 10, 10), (5, 20, 20)), 0.0);
        // Idle larger than kernel + user (inconsistent samples) is clamped.
        assert_eq!(cpu_use((0, 0, 0), (900, 100, 100)), 0.0);
    }

    #[test]
    fn dpkg_status_keeps_installed_packages_only() {
        let sw = parse_dpkg_status(DPKG, MAX_SOFTWARE);
        assert_eq!(
            sw,
            vec![
                Software {
                    name: "openssl".into(),
                    version: "3.0.15-1~deb12u1".into(),
                    publisher: "Debian OpenSSL Team".into(),
                    source: "dpkg".into(),
                },
                Software {
                    name: "held".into(),
                    version: "2:1.2-3".into(),
                    publisher: "Team Only".into(),
                    source: "dpkg".into(),
                },
            ]
        );
        assert_eq!(parse_dpkg_status(DPKG, 1).len(), 1);
        assert!(parse_dpkg_status("", 10).is_empty());
    }

    #[test]
    fn rpm_lines_parse() {
        let out = "bash\t5.2.26-3.fc40\tFedora Project\ngpg-pubkey\t1-2\t(none)\n\n\
                   weird\n";
        let sw = parse_rpm_output(out, MAX_SOFTWARE);
        assert_eq!(sw.len(), 3);
        assert_eq!(sw[0].name, "bash");
        assert_eq!(sw[0].version, "5.2.26-3.fc40");
        assert_eq!(sw[0].publisher, "Fedora Project");
        assert_eq!(sw[0].source, "rpm");
        assert_eq!(sw[1].publisher, "");
        assert_eq!((sw[2].name.as_str(), sw[2].version.as_str()), ("weird", ""));
        assert_eq!(parse_rpm_output(out, 2).len(), 2);
    }

    #[test]
    fn reg_query_uninstall_output_parses() {
        let key = r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";
        let out = [
            "",
            &format!(r"{key}\7-Zip"),
            r"    DisplayIcon    REG_SZ    C:\Program Files\7-Zip\7zFM.exe",
            r"    DisplayName    REG_SZ    7-Zip 23.01 (x64)",
            r"    DisplayVersion    REG_SZ    23.01",
            r"    Publisher    REG_SZ    Igor Pavlov",
            r"    NoModify    REG_DWORD    0x1",
            "",
            &format!(r"{key}\{{ABC}}"),
            r"    DisplayName    REG_SZ    Hidden Runtime",
            r"    SystemComponent    REG_DWORD    0x1",
            "",
            &format!(r"{key}\KB123"),
            r"    DisplayName    REG_SZ    Update for Thing",
            r"    ParentKeyName    REG_SZ    Thing",
            "",
            &format!(r"{key}\NoName"),
            r"    UninstallString    REG_SZ    x.exe",
            "",
            &format!(r"{key}\Git_is1"),
            r"    Publisher    REG_SZ    ",
            r"    DisplayName    REG_SZ    Git  version 2.44",
            r"    SystemComponent    REG_DWORD    0x0",
            "",
        ]
        .join("\r\n");
        let sw = parse_reg_uninstall(&out);
        assert_eq!(
            sw,
            vec![
                Software {
                    name: "7-Zip 23.01 (x64)".into(),
                    version: "23.01".into(),
                    publisher: "Igor Pavlov".into(),
                    source: "registry".into(),
                },
                Software {
                    name: "Git  version 2.44".into(),
                    version: String::new(),
                    publisher: String::new(),
                    source: "registry".into(),
                },
            ]
        );
        assert!(parse_reg_uninstall("ERROR: The system was unable to find").is_empty());
    }

    #[test]
    fn inventory_of_this_machine_is_filled() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let mut c = Collector::new();
        let (inv, errors) = c.inventory(3, 1_700_000_000, "9.9.9");
        assert_eq!(
            (inv.v, inv.seq, inv.ts),
            (telemetry::VERSION, 3, 1_700_000_000)
        );
        assert_eq!(inv.agent_version, "9.9.9");
        assert_eq!(inv.os, "linux");
        assert!(!inv.hostname.is_empty(), "{inv:?}");
        assert!(!inv.machine_id.is_empty(), "{inv:?}");
        assert!(inv.cpu_cores > 0);
        assert!(inv.memory_total > 0);
        assert!(inv.boot_time > 0);
        assert!(!inv.disks.is_empty(), "{inv:?}");
        assert!(inv.disks.iter().all(|d| d.free <= d.total));
        assert!(
            !errors.iter().any(|e| e.collector != "software"),
            "{errors:?}"
        );
        if Path::new(DPKG_STATUS).exists() {
            assert!(inv.software.iter().any(|s| s.source == "dpkg"));
        }
        assert!(inv.software.len() <= MAX_SOFTWARE);
    }

    #[test]
    fn metrics_twice_are_sane() {
        let mut c = Collector::new();
        let first = c.metrics(1, 10);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let m = c.metrics(2, 11);
        assert_eq!((m.seq, m.ts), (2, 11));
        assert!(first.network.iter().all(|n| n.rx_bps == 0 && n.tx_bps == 0));
        let mut probe = System::new();
        probe.refresh_memory();
        assert!(m.memory_used <= probe.total_memory());
        assert!(m.memory_available <= probe.total_memory());
        assert!(m.process_count > 0);
        assert!(!m.top_cpu.is_empty() && m.top_cpu.len() <= TOP_PROCESSES);
        assert!(!m.top_memory.is_empty() && m.top_memory.len() <= TOP_PROCESSES);
        assert!(m.top_memory.windows(2).all(|w| w[0].memory >= w[1].memory));
        assert!((0.0..=100.0).contains(&m.cpu), "{}", m.cpu);
        assert!(m.cpu_per_core.iter().all(|c| (0.0..=100.0).contains(c)));
        assert!(m.uptime > 0);
        assert!(m.disks.iter().all(|d| d.used.checked_add(d.free).is_some()));
        if cfg!(unix) {
            assert!(m.load.is_some());
        }
        assert!(c.take_errors().is_empty());
        // It serializes within the report limit.
        let json = serde_json::to_vec(&m).unwrap_or_default();
        assert!(!json.is_empty() && json.len() < telemetry::MAX_REPORT_BYTES);
    }

    #[test]
    fn network_rates_divide_deltas_by_time() {
        assert_eq!(rate(1000, 3000, 2.0), 1000);
        assert_eq!(rate(3000, 1000, 2.0), 0);
        assert_eq!(finite(f32::NAN), 0.0);
    }

    #[test]
    fn top_lists_are_ordered_and_capped() {
        let procs: Vec<Process> = (0..8u32)
            .map(|i| Process {
                pid: i,
                name: format!("p{i}"),
                cpu: i as f32,
                memory: u64::from(100 - i),
            })
            .collect();
        let (cpu, mem) = top_processes(&procs);
        assert_eq!(
            cpu.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [7, 6, 5, 4, 3]
        );
        assert_eq!(
            mem.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    fn sample_inventory() -> Inventory {
        Inventory {
            v: 1,
            seq: 1,
            ts: 100,
            hostname: "ws-042".into(),
            os: "linux".into(),
            os_version: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0".into(),
            arch: "x86_64".into(),
            machine_id: "m".into(),
            boot_time: 50,
            cpu_model: "cpu".into(),
            cpu_cores: 2,
            cpu_mhz: 2450,
            memory_total: 1 << 30,
            swap_total: 0,
            disks: vec![Disk {
                mount: "/".into(),
                fs: "ext4".into(),
                total: 1000,
                free: 500,
                removable: false,
            }],
            interfaces: vec![],
            software: vec![Software {
                name: "openssl".into(),
                version: "3".into(),
                publisher: String::new(),
                source: "dpkg".into(),
            }],
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn fingerprint_ignores_volatile_fields_and_sees_software_changes() {
        let a = sample_inventory();
        let mut b = a.clone();
        b.seq = 2;
        b.ts = 200;
        b.boot_time = 51;
        b.cpu_mhz = 800;
        b.disks[0].free = 1;
        assert_eq!(inventory_fingerprint(&a), inventory_fingerprint(&b));
        b.software[0].version = "3.1".into();
        assert_ne!(inventory_fingerprint(&a), inventory_fingerprint(&b));
        let mut c = a.clone();
        c.disks[0].total = 2000;
        assert_ne!(inventory_fingerprint(&a), inventory_fingerprint(&c));
    }

    #[test]
    fn fingerprint_is_stable_on_this_machine() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let mut c = Collector::new();
        let (one, _) = c.inventory(1, 1, "0.1.0");
        let (two, _) = c.inventory(2, 2, "0.1.0");
        assert_eq!(inventory_fingerprint(&one), inventory_fingerprint(&two));
        let mut changed = two.clone();
        changed.software.push(Software {
            name: "zzz-new-package".into(),
            version: "1".into(),
            publisher: String::new(),
            source: "dpkg".into(),
        });
        assert_ne!(inventory_fingerprint(&one), inventory_fingerprint(&changed));
    }

    #[test]
    fn collect_errors_become_events() {
        let e = CollectError::new("software", "dpkg status unreadable");
        assert_eq!(e.to_string(), "collector software: dpkg status unreadable");
        assert_eq!(
            e.to_event(),
            EventKind::CollectionError {
                collector: "software".into(),
                message: "dpkg status unreadable".into(),
            }
        );
    }
}
