//! The advisory locks against a real PostgreSQL server, whose URL comes from
//! `ORCH_TEST_PG_URL`. Without it these tests say so loudly and pass, unless
//! `ORCH_TEST_PG_REQUIRED=1`, when they fail. The tests share the server with
//! each other (and with other suites), so they look only at their own keys.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::liveness::Locks;

use super::test_server as server;

/// Advisory locks in the test database, as one process sees them.
fn advisory(url: &str) -> Locks {
    Locks::configured(PathBuf::new(), Some(url)).expect("locks")
}

/// A plain session of our own, an outside observer.
fn observer(url: &str) -> Client {
    Client::connect(url, NoTls).expect("observer connects")
}

/// The backend pids holding the lock of `token`, and whether any session
/// waits for it.
fn holders(observer: &mut Client, token: &str) -> (Vec<i32>, bool) {
    let key = key_of(token).expect("a token of ours");
    let rows = observer
        .query(
            &format!(
                "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND {KEY} = $1"
            ),
            &[&key],
        )
        .expect("pg_locks");
    let granted = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let waiting = rows.iter().any(|r| !r.get::<_, bool>(1));
    (granted, waiting)
}

/// Probe until `token` reads `want` or `within` passes; how long it took.
fn wait_for(locks: &Locks, token: &str, want: Liveness, within: Duration) -> Duration {
    let start = Instant::now();
    while locks.probe(token).expect("probe") != want {
        assert!(
            start.elapsed() < within,
            "{token} still not {want:?} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn tokens_and_keys_round_trip_and_malformed_tokens_name_no_key() {
    for key in [0, 1, -1, i64::MIN, i64::MAX, 0x0123_4567_89ab_cdef] {
        let token = token_of(key);
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(key_of(&token), Some(key), "{token}");
    }
    assert_eq!(token_of(-1), "ffffffffffffffff");
    for bad in [
        "",
        "0123456789abcde",
        "0123456789abcdef0",
        "0123456789ABCDEF",
        "+123456789abcdef",
        "../../etc/passwd",
        &"a".repeat(32),
    ] {
        assert_eq!(key_of(bad), None, "{bad}");
    }
}

#[test]
fn an_unreachable_database_is_an_error_never_dead() {
    // Nothing listens on port 1 of the loopback: the connection is refused.
    let locks = advisory("postgresql://orch@127.0.0.1:1/postgres");
    let token = token_of(42);
    assert!(
        locks.probe(&token).is_err(),
        "a probe that cannot ask fails"
    );
    assert!(locks.census().is_err());
    assert!(locks.pid_holds(&token, 1).is_err());
    assert!(locks.acquire().is_err());
    // A malformed token names no lock: dead without asking anyone.
    assert_eq!(locks.probe("zz").expect("malformed"), Liveness::Dead);
}

#[test]
fn a_held_lock_is_alive_to_another_session_and_the_census_a_released_one_dead() {
    let Some(url) = server() else { return };
    let (owner, other) = (advisory(&url), advisory(&url));
    assert!(owner.spans_hosts());
    let lock = owner.acquire().expect("acquire");
    let token = lock.token().to_owned();
    assert!(
        key_of(&token).is_some(),
        "the token is the lock key: {token}"
    );
    for locks in [&owner, &other] {
        assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
        let census = locks.census().expect("census");
        assert_eq!(census.probe(&token).expect("census"), Liveness::Alive);
        let alive = census.alive_tokens().expect("advisory census lists");
        assert!(alive.contains(&token), "{token} in {alive:?}");
    }
    assert_eq!(
        owner.sweep(|| panic!("nothing to sweep")).expect("sweep"),
        0
    );
    lock.release();
    assert_eq!(other.probe(&token).expect("probe"), Liveness::Dead);
    let census = other.census().expect("census");
    assert_eq!(census.probe(&token).expect("census"), Liveness::Dead);
    assert!(!census.alive_tokens().expect("list").contains(&token));
    assert!(other.may_have_handed_over(&token));
    for malformed in ["", "zz", &"a".repeat(32), &token.to_uppercase()] {
        assert_eq!(other.probe(malformed).expect("probe"), Liveness::Dead);
        assert_eq!(census.probe(malformed).expect("census"), Liveness::Dead);
    }
}

#[test]
fn a_probe_never_blocks_and_never_takes_the_lock() {
    let Some(url) = server() else { return };
    let (owner, prober) = (advisory(&url), advisory(&url));
    let mut observer = observer(&url);
    let lock = owner.acquire().expect("acquire");
    let token = lock.token().to_owned();
    let (before, _) = holders(&mut observer, &token);
    assert_eq!(before.len(), 1, "one holder: {before:?}");
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(prober.probe(&token).expect("probe"), Liveness::Alive);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    let (during, waiting) = holders(&mut observer, &token);
    assert_eq!(during, before, "the holder alone holds it");
    assert!(!waiting, "no probe waits for the lock");
    lock.release();
    assert_eq!(prober.probe(&token).expect("probe"), Liveness::Dead);
    assert_eq!(holders(&mut observer, &token), (vec![], false));
    // Free for anyone: the probes took nothing.
    let key = key_of(&token).expect("key");
    let taken: bool = observer
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .expect("try")
        .get(0);
    assert!(taken);
    observer
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .expect("unlock");
}

#[test]
fn a_terminated_session_is_dead() {
    let Some(url) = server() else { return };
    let locks = advisory(&url);
    let mut observer = observer(&url);
    let lock = locks.acquire().expect("acquire");
    let token = lock.token().to_owned();
    let (pids, _) = holders(&mut observer, &token);
    assert_eq!(pids.len(), 1);
    let ended: bool = observer
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pids[0]])
        .expect("terminate")
        .get(0);
    assert!(ended);
    wait_for(&locks, &token, Liveness::Dead, Duration::from_secs(2));
    // Releasing a lock whose session is gone is quiet.
    lock.release();
}

/// Set by [`a_killed_holder_is_dead_at_once`] in the child it kills.
const HOLDER_ENV: &str = "ORCH_TEST_ADVISORY_HOLDER";

/// Not a test of its own: the child process of
/// [`a_killed_holder_is_dead_at_once`], which takes a lock, prints its token
/// and waits to be killed. Without its variable it does nothing.
#[test]
fn holder_for_the_kill_test() {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return;
    }
    let url = std::env::var("ORCH_TEST_PG_URL").expect("the parent passes the URL");
    let lock = advisory(&url).acquire().expect("acquire");
    println!("token={}", lock.token());
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_holder_is_dead_at_once() {
    let Some(url) = server() else { return };
    let exe = std::env::current_exe().expect("this test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "liveness::advisory::tests::holder_for_the_kill_test",
            "--nocapture",
        ])
        .env(HOLDER_ENV, "1")
        .env("ORCH_TEST_PG_URL", &url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the holder");
    let stdout = child.stdout.take().expect("piped");
    let token = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("token=").map(str::to_owned));
    let Some(token) = token else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the holder printed no token");
    };
    let locks = advisory(&url);
    assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
    child.kill().expect("SIGKILL the holder");
    child.wait().expect("reap the holder");
    // Its kernel closed the socket; the idle backend reads end-of-file and
    // exits: no keepalive to wait for.
    let took = wait_for(&locks, &token, Liveness::Dead, Duration::from_secs(2));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn only_our_own_pid_of_this_host_holds_the_lock() {
    let Some(url) = server() else { return };
    let locks = advisory(&url);
    let me = i64::from(std::process::id());
    let lock = locks.acquire().expect("acquire");
    assert!(locks.pid_holds(lock.token(), me).expect("ours"));
    assert!(!locks.pid_holds(lock.token(), me + 1).expect("another pid"));
    assert!(!locks.pid_holds(lock.token(), -1).expect("no pid"));
    assert!(!locks.pid_holds("zz", me).expect("malformed"));
    // A session of another host, named for our very pid, holds a lock: it
    // is alive, but its pid is not ours to signal.
    let joiner = if url.contains('?') { '&' } else { '?' };
    let mut foreign = format!("{url}{joiner}application_name=orch:another-host:{me}")
        .parse::<postgres::Config>()
        .expect("config")
        .connect(NoTls)
        .expect("foreign session");
    let key = random_key().expect("key");
    foreign
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("lock");
    let token = token_of(key);
    assert_eq!(locks.probe(&token).expect("probe"), Liveness::Alive);
    assert!(!locks.pid_holds(&token, me).expect("foreign"));
    drop(foreign);
    let token_of_ours = lock.token().to_owned();
    lock.release();
    assert!(!locks.pid_holds(&token_of_ours, me).expect("released"));
}

#[test]
fn the_holder_session_tells_the_server_to_drop_it_when_its_host_dies() {
    let Some(url) = server() else { return };
    let mut session = Advisory::new(&url)
        .expect("url")
        .acquire()
        .expect("acquire");
    let setting = |client: &mut Client, name: &str| -> String {
        client
            .query_one("SELECT current_setting($1)", &[&name])
            .expect("setting")
            .get(0)
    };
    for (name, want) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
        ("idle_session_timeout", "0"),
    ] {
        assert_eq!(setting(&mut session.client, name), want, "{name}");
    }
    let name = setting(&mut session.client, "application_name");
    assert_eq!(Some(name), holder_name(std::process::id()));
    session.release();
}

#[test]
fn the_lock_session_is_not_inherited_by_a_child() {
    let Some(url) = server() else { return };
    let sockets_of = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .collect()
    };
    let lock = advisory(&url).acquire().expect("acquire");
    assert!(
        !sockets_of(std::process::id()).is_empty(),
        "the lock's session is a socket of ours"
    );
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let sockets = sockets_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    lock.release();
    assert!(
        sockets.is_empty(),
        "an agent would keep a dead owner's session open: {sockets:?}"
    );
}
