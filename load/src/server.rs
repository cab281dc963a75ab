//! The server's resident memory, read from `/proc/<pid>/status`; the pid is given or found
//! as the process holding the listening socket of the server's port.

use std::time::Duration;

/// `VmRSS` of a process in KiB, or `None` when it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The median of five samples 100 ms apart: one sample can catch a short-lived buffer.
pub async fn median_rss_kib(pid: u32) -> Option<u64> {
    let mut samples = Vec::with_capacity(5);
    for _ in 0..5 {
        samples.push(rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// The process with a socket listening on TCP `port` (IPv4 or IPv6), if this user may see
/// it: the socket's inode from /proc/net/tcp*, then the process whose fd links to it.
pub fn find_by_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is the 10th field.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}
