//! Facts about this process and machine for records and benchmarks.

/// Peak resident memory of this process so far (`VmHWM`), in bytes; `None` where
/// `/proc` does not say (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Restarts the peak count (`VmHWM`) from the current resident size, so the next
/// [`peak_rss_bytes`] is the peak of what follows (Linux's `clear_refs` value 5).
/// Returns false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// The machine's host name, for records and claims.
pub fn host_name() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if !h.is_empty() {
        return h;
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The host name with only characters safe in file names.
pub fn host_name_for_files() -> String {
    host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(super::peak_rss_bytes().unwrap() > 1 << 20);
        }
    }
}
