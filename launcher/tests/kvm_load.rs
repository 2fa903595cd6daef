//! Load on the KVM engine: 200 sequential launches of a probe guest. Each launcher's peak RSS
//! (from `wait4`) stays flat from the first launches to the last, no descriptor is left in the
//! parent, and no launcher process outlives its run.

mod probes;

const LAUNCHES: usize = 200;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn kvm_200_sequential_launches_keep_rss_and_fds_flat() {
    if !probes::kvm_available("kvm_200_sequential_launches_keep_rss_and_fds_flat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = probes::build(dir.path(), "hello", &["EXIT_CODE=7"]);
    let pod = dir.path().join("hello.pod");
    probes::seal_pod(&pod, &kernel, b"x", &[0u8; 4096], "probe=1 quiet");
    let cache = dir.path().join("cache");
    let fds_before = open_fds();
    let started = std::time::Instant::now();
    let mut rss = Vec::with_capacity(LAUNCHES);
    for i in 0..LAUNCHES {
        let (code, kib) = probes::launch_peak_rss(&pod, &cache);
        assert_eq!(code, 7, "launch {i}");
        rss.push(kib);
    }
    let first = *rss[..50].iter().max().unwrap();
    let last = *rss[LAUNCHES - 50..].iter().max().unwrap();
    eprintln!(
        "{LAUNCHES} launches in {:?}; peak RSS KiB: first 50 max {first}, last 50 max {last}, min {}, max {}",
        started.elapsed(),
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap()
    );
    assert!(
        last <= first + 512,
        "peak RSS grew from {first} to {last} KiB"
    );
    assert_eq!(open_fds(), fds_before, "descriptors left in the parent");
    // No launcher process is left (each was reaped above; none forked a survivor).
    let ours = std::process::id().to_string();
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|st| st.contains("(hyperlaunch)"))
        .filter(|st| st.split_whitespace().nth(3) == Some(ours.as_str()))
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
}
