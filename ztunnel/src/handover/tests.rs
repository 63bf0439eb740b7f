use std::os::unix::fs::MetadataExt;

use super::*;

/// The device and inode of a file: equal for two descriptors of one socket.
type Inode = (u64, u64);

/// The device and inode of the file behind `fd`.
fn inode(fd: &impl AsFd) -> Inode {
    let file = File::from(fd.as_fd().try_clone_to_owned().unwrap());
    let meta = file.metadata().unwrap();
    (meta.dev(), meta.ino())
}

/// A pod of its own: a new network namespace (on a thread of its own, which stays in it) with
/// ztunnel's three IPv4 listeners bound in it.
fn pod() -> Handoff {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a new network namespace (root)");
        let bind = |port| OwnedFd::from(TcpListener::bind(("0.0.0.0", port)).unwrap());
        Handoff {
            netns_path: PathBuf::from("/proc/thread-self/ns/net"),
            netns: OwnedFd::from(File::open("/proc/thread-self/ns/net").unwrap()),
            listeners: vec![(
                Family::V4,
                [
                    bind(OUTBOUND_PORT),
                    bind(HBONE_PORT),
                    bind(INBOUND_PLAINTEXT_PORT),
                ],
            )],
        }
    })
    .join()
    .unwrap()
}

/// A predecessor answering every successor with copies of `pods`; what became of each handover
/// arrives on the returned channel.
fn predecessor(
    dir: &Path,
    pods: HashMap<String, Handoff>,
) -> (Server, std::sync::mpsc::Receiver<Result<usize, String>>) {
    let (server, mut requests) = Server::start(dir).unwrap();
    let (outcomes, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            while let Some(request) = requests.recv().await {
                let copies = pods
                    .iter()
                    .map(|(uid, pod)| (uid.clone(), pod.try_clone().unwrap()))
                    .collect();
                let _ = request.reply.send(copies);
                let outcome = request.outcome.await.unwrap_or(Err("dropped".into()));
                let _ = outcomes.send(outcome);
            }
        });
    });
    (server, seen)
}

#[test]
fn a_successor_gets_the_very_sockets_and_namespace_of_each_pod() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pod(), pod());
    let expected: Vec<(String, Inode, Vec<Inode>)> = [("uid-a", &a), ("uid-b", &b)]
        .iter()
        .map(|(uid, p)| {
            let fds = p.listeners[0].1.iter().map(inode).collect();
            (uid.to_string(), inode(&p.netns), fds)
        })
        .collect();
    let (server, outcomes) = predecessor(
        dir.path(),
        HashMap::from([("uid-a".to_owned(), a), ("uid-b".to_owned(), b)]),
    );
    let (inherited, _running) = take_over(dir.path());
    assert_eq!(
        outcomes.recv().unwrap(),
        Ok(2),
        "the predecessor was not told both were taken"
    );
    let inherited = inherited.lock().unwrap();
    assert_eq!(inherited.len(), 2);
    for (uid, netns, fds) in expected {
        let pod = &inherited[&uid];
        assert_eq!(inode(&pod.netns), netns, "{uid}: not the same namespace");
        let got: Vec<_> = pod.listeners[0].1.iter().map(inode).collect();
        assert_eq!(got, fds, "{uid}: not the same sockets");
        assert_eq!(pod.listeners[0].0, Family::V4);
        assert!(pod.tokio_listeners(Family::V6).unwrap().is_none());
    }
    // A second successor (the first crashed) is answered the same.
    assert_eq!(take_over(dir.path()).0.lock().unwrap().len(), 2);
    assert_eq!(outcomes.recv().unwrap(), Ok(2));
    server.close();
    assert!(
        take_over(dir.path()).0.lock().unwrap().is_empty(),
        "a closed predecessor still answered"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "socket left behind"
    );
}

/// Listeners taken over are given TCP_NODELAY whatever the predecessor set (here: none), and pass
/// it to what they accept, as listeners made here do.
#[tokio::test]
async fn sockets_accepted_on_inherited_listeners_have_tcp_nodelay() {
    let bind = || {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        (OwnedFd::from(listener), addr)
    };
    let [(out, addr), hbone, plain] = [bind(), bind(), bind()];
    let pod = Handoff {
        netns_path: PathBuf::from("/proc/self/ns/net"),
        netns: OwnedFd::from(File::open("/proc/self/ns/net").unwrap()),
        listeners: vec![(Family::V4, [out, hbone.0, plain.0])],
    };
    let [out, ..] = pod.tokio_listeners(Family::V4).unwrap().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = out.accept().await.unwrap();
    assert!(accepted.nodelay().unwrap(), "accepted with Nagle's delay");
    assert!(!client.nodelay().unwrap());
}

#[test]
fn the_socket_of_a_ztunnel_that_is_gone_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("ztunnel-1-1.sock");
    let fd = seqpacket().unwrap();
    net::bind(&fd, &unix_addr(&stale).unwrap()).unwrap();
    drop(fd);
    assert!(stale.exists());
    assert!(take_over(dir.path()).0.lock().unwrap().is_empty());
    assert!(!stale.exists());
    // No directory at all: nothing to take over.
    assert!(
        take_over(&dir.path().join("none"))
            .0
            .lock()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn descriptors_that_are_not_the_pods_listeners_are_refused() {
    let p = pod();
    let netns = || p.netns.try_clone().unwrap();
    let listeners = || {
        p.listeners[0]
            .1
            .each_ref()
            .map(|fd| fd.try_clone().unwrap())
    };
    let v4 = vec!["v4".to_owned()];
    // Right.
    let [a, b, c] = listeners();
    assert!(handoff(PathBuf::from("/x"), &v4, vec![netns(), a, b, c]).is_ok());
    // One missing.
    let [a, b, _] = listeners();
    let err = handoff(PathBuf::from("/x"), &v4, vec![netns(), a, b]).unwrap_err();
    assert!(err.to_string().contains("3 descriptors"), "{err}");
    // A file where a listener should be.
    let file = OwnedFd::from(File::open("/dev/null").unwrap());
    let [a, b, _] = listeners();
    let err = handoff(PathBuf::from("/x"), &v4, vec![netns(), a, b, file]).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    // The listeners out of order: a port that is not the expected one.
    let [a, b, c] = listeners();
    let err = handoff(PathBuf::from("/x"), &v4, vec![netns(), b, a, c]).unwrap_err();
    assert!(err.to_string().contains("expected v4 port 15001"), "{err}");
    // Said to be IPv6.
    let [a, b, c] = listeners();
    let v6 = vec!["v6".to_owned()];
    assert!(handoff(PathBuf::from("/x"), &v6, vec![netns(), a, b, c]).is_err());
    // A family twice, or an unknown one.
    let twice = vec!["v4".to_owned(), "v4".to_owned()];
    assert!(handoff(PathBuf::from("/x"), &twice, vec![netns()]).is_err());
    assert!(handoff(PathBuf::from("/x"), &["v5".to_owned()], vec![netns()]).is_err());
}

#[test]
fn a_successor_that_goes_away_before_answering_leaves_the_node_to_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let (server, outcomes) = predecessor(dir.path(), HashMap::from([("uid-a".to_owned(), pod())]));
    let socket = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .unwrap();
    // It reads everything, then vanishes without saying what it took.
    let fd = seqpacket().unwrap();
    net::connect(&fd, &unix_addr(&socket).unwrap()).unwrap();
    loop {
        match receive(&fd).unwrap() {
            (Message::Done { pods, stays, .. }, _) => break assert_eq!((pods, stays), (1, true)),
            (Message::Pod { .. }, fds) => assert_eq!(fds.len(), 4),
            (other, _) => panic!("{other:?}"),
        }
    }
    drop(fd);
    let outcome = outcomes.recv().unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    // It is still there for the next one.
    assert_eq!(take_over(dir.path()).0.lock().unwrap().len(), 1);
    assert_eq!(outcomes.recv().unwrap(), Ok(1));
    drop(server);
}

#[test]
fn an_invalid_pod_is_skipped_and_the_rest_taken() {
    let dir = tempfile::tempdir().unwrap();
    let good = pod();
    let mut bad = pod();
    // Its listeners out of order: the HBONE socket where the outbound one should be.
    bad.listeners[0].1.swap(0, 1);
    let (_server, outcomes) = predecessor(
        dir.path(),
        HashMap::from([("good".to_owned(), good), ("bad".to_owned(), bad)]),
    );
    let (inherited, _running) = take_over(dir.path());
    let inherited = inherited.lock().unwrap();
    assert_eq!(inherited.keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(outcomes.recv().unwrap(), Ok(1));
}

/// A predecessor speaking the protocol by hand: one successor, an empty handover ending with
/// `done` (raw JSON, as any version would send it) and `fds`, then the connection held until the
/// returned sender is dropped.
fn scripted_predecessor(
    dir: &Path,
    done: &'static str,
    fds: Vec<OwnedFd>,
) -> std::sync::mpsc::Sender<()> {
    let path = dir.join(format!("ztunnel-scripted-{}.sock", done.len()));
    let listener = seqpacket().unwrap();
    net::bind(&listener, &unix_addr(&path).unwrap()).unwrap();
    net::listen(&listener, 1).unwrap();
    let (hold, release) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let conn = net::accept(&listener).unwrap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        if !borrowed.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        }
        net::sendmsg(
            &conn,
            &[IoSlice::new(done.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        // `taken`, or nothing from a successor that refused the handover.
        let _ = receive(&conn);
        let _ = release.recv();
        drop(conn);
    });
    hold
}

/// Waits until `running` reads `n`.
fn until_running(running: &Predecessors, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while *running.borrow() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} running, not {n}",
            *running.borrow()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_predecessor_counts_as_running_until_its_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let hold = scripted_predecessor(
        dir.path(),
        r#"{"done":{"pods":0,"stays":true}}"#,
        Vec::new(),
    );
    let (_, running) = take_over(dir.path());
    assert_eq!(*running.borrow(), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(*running.borrow(), 1, "counted gone while still connected");
    drop(hold);
    until_running(&running, 0);
}

#[test]
fn the_predecessors_of_a_predecessor_are_counted_until_they_exit_too() {
    let dir = tempfile::tempdir().unwrap();
    // The predecessor's own connection to one before it, still running (the other end here).
    let (older, older_end) = net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let hold = scripted_predecessor(
        dir.path(),
        r#"{"done":{"pods":0,"stays":true}}"#,
        vec![older_end],
    );
    let (_, running) = take_over(dir.path());
    assert_eq!(*running.borrow(), 2);
    // The predecessor exits first: the one before it still runs.
    drop(hold);
    until_running(&running, 1);
    drop(older);
    until_running(&running, 0);
}

#[test]
fn those_a_predecessor_counts_for_good_are_counted_for_good_here_too() {
    let dir = tempfile::tempdir().unwrap();
    let done = r#"{"done":{"pods":0,"stays":true,"forever":2}}"#;
    let hold = scripted_predecessor(dir.path(), done, Vec::new());
    let (_, running) = take_over(dir.path());
    assert_eq!(*running.borrow(), 3);
    drop(hold);
    until_running(&running, 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*running.borrow(), 2);
    // And passed on to this one's successors.
    assert!(FOREVER.load(Ordering::Relaxed) >= 2);
}

#[test]
fn a_predecessor_that_does_not_stay_or_whose_handover_failed_counts_as_running_for_good() {
    // An older version (no `stays`, and it closes the connection at once), and one answering
    // with something no predecessor sends.
    for last in [r#"{"done":{"pods":0}}"#, r#"{"taken":{"pods":0}}"#] {
        let dir = tempfile::tempdir().unwrap();
        let hold = scripted_predecessor(dir.path(), last, Vec::new());
        let (inherited, running) = take_over(dir.path());
        assert!(inherited.lock().unwrap().is_empty());
        drop(hold);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(*running.borrow(), 1, "{last}");
    }
}

#[test]
fn this_ztunnel_stays_connected_to_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let (server, outcomes) = predecessor(dir.path(), HashMap::from([("uid-a".to_owned(), pod())]));
    let (inherited, running) = take_over(dir.path());
    assert_eq!(inherited.lock().unwrap().len(), 1);
    assert_eq!(outcomes.recv().unwrap(), Ok(1));
    // Closing the handover socket (its drain ends it) does not end the conversation: only exiting.
    server.close();
    std::thread::sleep(Duration::from_millis(200));
    assert!(*running.borrow() >= 1);
}
