//! Resident set size of a process, from `/proc/PID/status` (Linux only).

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no VmRSS line for pid {pid}")))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tgateway\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(super::parse_vm_rss(status), Some(12345));
        assert_eq!(super::parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_our_own_rss() {
        assert!(super::rss_kib(std::process::id()).unwrap() > 0);
    }
}
