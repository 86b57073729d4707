//! The memory sampler: a background thread that measures what each running model really uses.
//!
//! It owns nothing but its list of targets (model, generation, process-group leader), which
//! the supervisor sends whenever the set of running processes changes. While the list is
//! non-empty it wakes every [`INTERVAL`], sums the proportional set size (`Pss` from
//! `/proc/PID/smaps_rollup`, RSS as a fallback) over each model's whole process group, reads
//! GPU memory per process from `nvidia-smi` when it is on `PATH` (or, for AMD, the device total
//! from sysfs, credited to the only running model), and reports back as
//! `Command::Observed`. With nothing running it blocks on its channel and costs nothing. It
//! never runs on the request path, and it never decides anything: the supervisor does.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::memory::Footprint;
use super::Command;

/// How often running models are measured.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// One process group to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub model: String,
    pub generation: u64,
    /// The group leader's pid, which is also the process group id (children are spawned with
    /// `process_group(0)`).
    pub pid: u32,
}

/// Starts the sampler thread; dropping the returned sender ends it.
pub fn start(tx: Sender<Command>) -> Sender<Vec<Target>> {
    let (targets_tx, targets_rx) = crossbeam_channel::unbounded();
    let spawned = std::thread::Builder::new()
        .name("memory-sampler".to_string())
        .spawn(move || run(&targets_rx, &tx));
    if let Err(error) = spawned {
        log::warn!("memory sampler could not start ({error}); footprints are not measured");
    }
    targets_tx
}

fn run(targets_rx: &Receiver<Vec<Target>>, tx: &Sender<Command>) {
    let mut targets: Vec<Target> = Vec::new();
    let nvidia_smi = find_on_path("nvidia-smi");
    // A fixed cadence: changes of the target list do not push the next sample back, so a
    // busy swapd (models starting and stopping often) is still measured every INTERVAL.
    let mut next_sample = Instant::now() + INTERVAL;
    loop {
        let next = if targets.is_empty() {
            targets_rx
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            targets_rx.recv_deadline(next_sample)
        };
        match next {
            Ok(new_targets) => {
                if targets.is_empty() {
                    next_sample = Instant::now() + INTERVAL;
                }
                targets = new_targets;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        next_sample = Instant::now() + INTERVAL;
        let gpu = gpu_usage(nvidia_smi.as_deref(), targets.len());
        let members = process_groups(targets.iter().map(|t| t.pid));
        for target in &targets {
            let pids = members
                .iter()
                .filter(|(_, group)| *group == target.pid)
                .map(|(pid, _)| *pid);
            let mut ram = 0u64;
            let mut gpu_bytes = None;
            for pid in pids {
                ram += resident_bytes(pid).unwrap_or(0);
                match &gpu {
                    GpuUsage::PerProcess(per_pid) => {
                        let used: u64 = per_pid
                            .iter()
                            .filter(|(p, _)| *p == pid)
                            .map(|(_, bytes)| bytes)
                            .sum();
                        gpu_bytes = Some(gpu_bytes.unwrap_or(0) + used);
                    }
                    GpuUsage::DeviceTotal(total) => gpu_bytes = Some(*total),
                    GpuUsage::None => {}
                }
            }
            if ram == 0 {
                // The group is gone (or unreadable); the exit report will follow.
                continue;
            }
            let observed = Footprint {
                ram: Some(ram),
                gpu: gpu_bytes,
            };
            let sent = tx.send(Command::Observed {
                model: target.model.clone(),
                generation: target.generation,
                observed,
            });
            if sent.is_err() {
                return;
            }
        }
    }
}

/// GPU memory in use, as far as this machine can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuUsage {
    /// Bytes per pid, from `nvidia-smi --query-compute-apps`.
    PerProcess(Vec<(u32, u64)>),
    /// Bytes in use on the device (AMD sysfs), credited to the only running model.
    DeviceTotal(u64),
    None,
}

fn gpu_usage(nvidia_smi: Option<&Path>, running: usize) -> GpuUsage {
    if let Some(program) = nvidia_smi {
        let output = run_tool(
            program,
            &[
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
        );
        return match output {
            Ok(text) => GpuUsage::PerProcess(parse_compute_apps(&text)),
            Err(error) => {
                log::debug!("nvidia-smi: {error}");
                GpuUsage::None
            }
        };
    }
    if running == 1 {
        let used = amd_vram("mem_info_vram_used");
        if !used.is_empty() {
            return GpuUsage::DeviceTotal(used.iter().sum());
        }
    }
    GpuUsage::None
}

/// Parses `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`:
/// one `pid, MiB` line per process and GPU (a process on two GPUs appears twice). Lines that
/// do not parse (`[N/A]`, `[Not Supported]`) are skipped.
pub fn parse_compute_apps(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|line| {
            let (pid, used) = line.split_once(',')?;
            let pid = pid.trim().parse::<u32>().ok()?;
            let mib = used.trim().parse::<u64>().ok()?;
            Some((pid, mib << 20))
        })
        .collect()
}

/// Parses `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits` (MiB per GPU).
pub fn parse_gpu_totals(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.trim().parse::<u64>().ok().map(|mib| mib << 20))
        .collect()
}

/// The memory of all GPUs together, for `gpu: auto`: from `nvidia-smi` when on `PATH`, else
/// from AMD's sysfs. `None` when neither is available. GPUs are one pool because per-process
/// usage is summed over GPUs too (a model split over two cards counts both shares).
/// On a single-GPU host, which is the common case, this is simply that card's memory.
pub fn gpu_total() -> Option<u64> {
    if let Some(program) = find_on_path("nvidia-smi") {
        let text = run_tool(
            &program,
            &["--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        )
        .map_err(|error| log::warn!("nvidia-smi: {error}"))
        .ok()?;
        let totals = parse_gpu_totals(&text);
        return (!totals.is_empty()).then(|| totals.iter().sum());
    }
    let totals = amd_vram("mem_info_vram_total");
    (!totals.is_empty()).then(|| totals.iter().sum())
}

/// How long `nvidia-smi` may take before it is killed: a wedged driver can make it hang, and
/// resolving `gpu: auto` on a reload runs on the supervisor thread.
const TOOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a short-lived tool and returns its standard output, killing it after
/// [`TOOL_TIMEOUT`]. Its output is small (a line per GPU or process), far below a pipe's
/// buffer, so it cannot block writing while we wait for it to exit.
fn run_tool(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = Process::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", program.display()))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} took longer than {TOOL_TIMEOUT:?}",
                    program.display()
                ));
            }
            Err(error) => return Err(format!("waiting for {}: {error}", program.display())),
        }
    };
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut text);
    }
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{} failed with {status}", program.display()))
    }
}

/// One value per AMD card from `/sys/class/drm/card*/device/<file>`.
fn amd_vram(file: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/sys/class/drm") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("card") && !name.contains('-')
        })
        .filter_map(|entry| {
            std::fs::read_to_string(entry.path().join("device").join(file))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .collect()
}

/// The executable `name` in a directory of `PATH`, if any.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// `(pid, process group)` for every process whose group is one of `groups`.
fn process_groups(groups: impl Iterator<Item = u32>) -> Vec<(u32, u32)> {
    let groups: Vec<u32> = groups.collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let group = process_group_of(&stat)?;
            groups.contains(&group).then_some((pid, group))
        })
        .collect()
}

/// The process group (field 5) of a `/proc/PID/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last `)`.
pub fn process_group_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state, ppid, pgrp.
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// A process's resident memory: `Pss` from `smaps_rollup` (shared pages divided among their
/// users, so a model file mapped by two processes is not counted twice), else RSS.
fn resident_bytes(pid: u32) -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        if let Some(pss) = pss_of(&text) {
            return Some(pss);
        }
    }
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions and only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// The `Pss:` line of `smaps_rollup`, in bytes.
pub fn pss_of(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_apps_csv_maps_pids_to_bytes() {
        // The documented output shape (written by hand, not captured on a GPU host): two
        // processes, one split over two GPUs (so it appears twice), and a process whose memory
        // nvidia-smi cannot account (`[N/A]`, as on some vGPU setups).
        let text = "12345, 21012\n12345, 1024\n23456, 5432\n777, [N/A]\n\n";
        assert_eq!(
            parse_compute_apps(text),
            vec![
                (12345, 21012 << 20),
                (12345, 1024 << 20),
                (23456, 5432 << 20)
            ]
        );
        assert_eq!(parse_compute_apps("No running processes found\n"), vec![]);
    }

    #[test]
    fn tools_are_run_with_a_time_limit() {
        let echo = find_on_path("echo").expect("echo is on PATH");
        assert_eq!(run_tool(&echo, &["12, 34"]), Ok("12, 34\n".to_string()));
        let sleep = find_on_path("sleep").expect("sleep is on PATH");
        let error = run_tool(&sleep, &["30"]).expect_err("sleep 30 outlives the limit");
        assert!(error.contains("took longer"), "{error}");
        let false_ = find_on_path("false").expect("false is on PATH");
        assert!(run_tool(&false_, &[]).is_err());
    }

    #[test]
    fn gpu_totals_parse_per_gpu() {
        assert_eq!(
            parse_gpu_totals("24576\n12288\n"),
            vec![24576 << 20, 12288 << 20]
        );
    }

    #[test]
    fn stat_lines_with_odd_names_give_their_process_group() {
        assert_eq!(
            process_group_of("42 (llama-server) S 1 42 42 0 -1"),
            Some(42)
        );
        assert_eq!(process_group_of("43 (a) b (c)) R 42 40 40 0 -1"), Some(40));
        assert_eq!(process_group_of("garbage"), None);
    }

    #[test]
    fn pss_is_read_in_bytes() {
        let text = "55d0-7ff [rollup]\nRss:                2048 kB\nPss:                1536 kB\n";
        assert_eq!(pss_of(text), Some(1536 * 1024));
        assert_eq!(pss_of("Rss: 1 kB\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let pid = std::process::id();
        assert!(resident_bytes(pid).is_some_and(|bytes| bytes > 0));
        // SAFETY: getpgrp has no preconditions.
        let group = unsafe { libc::getpgrp() } as u32;
        let members = process_groups([group].into_iter());
        assert!(members.contains(&(pid, group)), "{members:?}");
    }
}
