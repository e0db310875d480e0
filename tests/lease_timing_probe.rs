//! Diagnostic (ignored): how long after kill -9 of the primary does the leader key vanish and
//! a replica promote? Prints timestamps; not a timed test.
mod support;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, FAST};

#[test]
#[ignore = "diagnostic; run by hand"]
fn kill9_timeline() {
    let mut c = Cluster::new(3, &FAST);
    c.start_all();
    let p = c.wait_primary(Duration::from_secs(90));
    support::eventually(Duration::from_secs(90), "replicas", || {
        ((0..3).filter(|&i| c.is_streaming(i)).count() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut watch = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &c.etcd.endpoint(),
            "watch",
            &format!("/service/{}/leader", c.scope),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let t0 = Instant::now();
    let h = std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("{:>6.2}s watch: {l}", t0.elapsed().as_secs_f64());
        }
    });
    c.kill_daemon(p, true);
    eprintln!("{:>6.2}s killed", t0.elapsed().as_secs_f64());
    let n = support::eventually(Duration::from_secs(40), "new primary", || {
        c.primary().filter(|&q| q != p)
    });
    eprintln!("{:>6.2}s new primary {n}", t0.elapsed().as_secs_f64());
    let _ = watch.kill();
    let _ = h.join();
}
