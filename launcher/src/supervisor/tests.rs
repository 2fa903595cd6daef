use super::*;

#[test]
fn exit_codes_follow_the_protocol_table() {
    let port = Ending::Machine(MachineEnd::ExitPort(0));
    assert_eq!(outcome(&port, Some(42), None).code, 42);
    assert_eq!(outcome(&port, None, Some("boom")).code, EXIT_INIT_PANIC);
    assert_eq!(outcome(&port, None, None).code, EXIT_NO_STATUS);
    let reset = Ending::Machine(MachineEnd::Reset);
    assert_eq!(outcome(&reset, Some(0), None).code, 0);
    let o = outcome(&reset, None, None);
    assert_eq!(o.code, EXIT_NO_STATUS);
    assert!(o.message.unwrap().contains("reset"));
    let tf = outcome(&Ending::Machine(MachineEnd::TripleFault), None, None);
    assert_eq!(tf.code, EXIT_NO_STATUS);
    assert!(tf.message.unwrap().contains("triple-fault"));
    // The status, once reported, wins over the launcher's own deadlines.
    let t = Ending::Timeout(Duration::from_secs(1));
    assert_eq!(outcome(&t, Some(3), None).code, 3);
    assert_eq!(outcome(&t, None, None).code, EXIT_TIMEOUT);
    assert_eq!(outcome(&t, None, Some("x")).code, EXIT_INIT_PANIC);
    let k = Ending::Machine(MachineEnd::Failed("KVM internal error: x".into()));
    let o = outcome(&k, Some(3), None);
    assert_eq!(
        (o.code, o.message.as_deref()),
        (125, Some("KVM internal error: x"))
    );
    let g = outcome(&Ending::GraceExpired(Duration::from_secs(2)), None, None);
    assert_eq!(g.code, EXIT_GRACE_KILLED);
    assert_eq!(g.code, 137);
    let r = outcome(&Ending::Requested("enough".into()), None, None);
    assert_eq!(
        (r.code, r.message.as_deref()),
        (125, Some("stopped: enough"))
    );
    assert_eq!(outcome(&Ending::StatusButNoEnd, Some(9), None).code, 9);
}

#[test]
fn signals_map_to_lines() {
    let opts = Options {
        stop_signal: 3,
        ..Options::default()
    };
    let none = || None;
    assert_eq!(
        signal_line(libc::SIGTERM, &opts, none),
        Some(HostLine::Signal(3))
    );
    assert_eq!(
        signal_line(libc::SIGINT, &opts, none),
        Some(HostLine::Signal(2))
    );
    assert_eq!(signal_line(libc::SIGWINCH, &opts, || Some((5, 6))), None);
    let tty = Options { tty: true, ..opts };
    assert_eq!(
        signal_line(libc::SIGWINCH, &tty, || Some((5, 6))),
        Some(HostLine::WindowSize { rows: 5, cols: 6 })
    );
    assert_eq!(signal_line(libc::SIGWINCH, &tty, none), None);
}

/// A machine that records what it was told and refuses lines while `busy` > 0.
#[derive(Default)]
struct Fake {
    busy: u32,
    sent: Vec<HostLine>,
    finished: Option<bool>,
}

impl Machine for Fake {
    fn send_line(&mut self, line: &HostLine) -> bool {
        if self.busy > 0 {
            self.busy -= 1;
            return false;
        }
        self.sent.push(*line);
        true
    }

    fn finish(&mut self, stop: bool) -> Result<(), String> {
        self.finished = Some(stop);
        Ok(())
    }
}

fn line(l: GuestLine) -> Event {
    Event::Line(Instant::now(), Ok(l))
}

#[test]
fn lines_wait_for_init_and_a_free_machine() {
    let (tx, rx) = event_queue();
    let opts = Options {
        stop_signal: 15,
        grace: Duration::from_secs(60),
        ..Options::default()
    };
    tx.send(Event::Signal(libc::SIGTERM)).unwrap();
    tx.send(line(GuestLine::Mark(Mark::Init))).unwrap();
    tx.send(line(GuestLine::Mark(Mark::Exec))).unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.send(line(GuestLine::Exit(143))).unwrap();
        tx.send(Event::Ended(MachineEnd::ExitPort(143))).unwrap();
    });
    let mut m = Fake {
        busy: 2,
        ..Fake::default()
    };
    let gate = std::sync::Arc::new(StdinGate::default());
    let waiter = {
        let gate = gate.clone();
        std::thread::spawn(move || gate.wait())
    };
    let r = supervise(&opts, &rx, &mut m, &gate);
    sender.join().unwrap();
    // The app's start opened the stdin gate.
    waiter.join().unwrap();
    assert_eq!(m.sent, vec![HostLine::Signal(15)]);
    assert_eq!(m.finished, Some(false));
    assert_eq!(r.outcome().code, 143);
    assert!(r.init.is_some() && r.app_exec.is_some() && r.status_at.is_some());
}

#[test]
fn timeout_and_grace_stop_the_machine() {
    let (tx, rx) = event_queue();
    let opts = Options {
        timeout: Some(Duration::from_millis(30)),
        ..Options::default()
    };
    let mut m = Fake::default();
    let r = supervise(&opts, &rx, &mut m, &StdinGate::default());
    assert_eq!(r.ending, Ending::Timeout(Duration::from_millis(30)));
    assert_eq!(m.finished, Some(true));
    assert_eq!(r.outcome().code, EXIT_TIMEOUT);

    let opts = Options {
        grace: Duration::from_millis(20),
        ..Options::default()
    };
    tx.send(line(GuestLine::Mark(Mark::Init))).unwrap();
    tx.send(Event::Signal(libc::SIGINT)).unwrap();
    let mut m = Fake::default();
    let r = supervise(&opts, &rx, &mut m, &StdinGate::default());
    assert_eq!(m.sent, vec![HostLine::Signal(2)]);
    assert_eq!(r.outcome().code, EXIT_GRACE_KILLED);
    drop(tx);
}

#[test]
fn a_reported_status_ends_the_deadlines() {
    let (tx, rx) = event_queue();
    let opts = Options {
        timeout: Some(Duration::from_millis(10)),
        ..Options::default()
    };
    tx.send(line(GuestLine::Exit(0))).unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        tx.send(Event::Ended(MachineEnd::ExitPort(0))).unwrap();
    });
    let mut m = Fake::default();
    let r = supervise(&opts, &rx, &mut m, &StdinGate::default());
    sender.join().unwrap();
    assert_eq!(r.ending, Ending::Machine(MachineEnd::ExitPort(0)));
    assert_eq!(r.outcome().code, 0);
}

#[test]
fn a_silent_channel_is_a_failure() {
    let (tx, rx) = event_queue();
    drop(tx);
    let r = supervise(
        &Options::default(),
        &rx,
        &mut Fake::default(),
        &StdinGate::default(),
    );
    assert_eq!(r.outcome().code, EXIT_LAUNCHER);
}

#[test]
fn an_overlong_line_or_a_flood_of_refused_ones_ends_the_run_with_121() {
    let bad = |e: LineError| Event::Line(Instant::now(), Err(e));
    // One overlong line ends the run at once.
    let (tx, rx) = event_queue();
    tx.send(bad(LineError::Unknown("Q".into()))).unwrap();
    tx.send(bad(LineError::TooLong)).unwrap();
    let mut m = Fake::default();
    let r = supervise(&Options::default(), &rx, &mut m, &StdinGate::default());
    assert_eq!(m.finished, Some(true));
    let o = r.outcome();
    assert_eq!(o.code, EXIT_PROTOCOL);
    assert_eq!(o.code, 121);
    assert!(o.message.unwrap().contains("longer than 64 bytes"));
    // MAX_BAD_LINES refused lines are tolerated; one more ends the run.
    let (tx, rx) = event_queue();
    for _ in 0..MAX_BAD_LINES {
        tx.send(bad(LineError::NotAscii)).unwrap();
    }
    tx.send(Event::Ended(MachineEnd::ExitPort(0))).unwrap();
    let r = supervise(
        &Options::default(),
        &rx,
        &mut Fake::default(),
        &StdinGate::default(),
    );
    assert_eq!(r.ending, Ending::Machine(MachineEnd::ExitPort(0)));
    let (tx, rx) = event_queue();
    for _ in 0..=MAX_BAD_LINES {
        tx.send(bad(LineError::Unknown("Q 1".into()))).unwrap();
    }
    tx.send(Event::Ended(MachineEnd::ExitPort(0))).unwrap();
    let r = supervise(
        &Options::default(),
        &rx,
        &mut Fake::default(),
        &StdinGate::default(),
    );
    let o = r.outcome();
    assert_eq!(o.code, EXIT_PROTOCOL);
    assert!(
        o.message
            .unwrap()
            .contains("more than 16 refused control lines")
    );
    // Once the status is in, a flood changes nothing.
    let (tx, rx) = event_queue();
    tx.send(line(GuestLine::Exit(7))).unwrap();
    tx.send(bad(LineError::TooLong)).unwrap();
    tx.send(Event::Ended(MachineEnd::ExitPort(7))).unwrap();
    let r = supervise(
        &Options::default(),
        &rx,
        &mut Fake::default(),
        &StdinGate::default(),
    );
    assert_eq!(r.outcome().code, 7);
}

/// The event queue holds at most EVENT_QUEUE events: a sender finding it full waits (it has
/// sent no more after 100 ms), goes on as events are taken, and gives up once the supervisor
/// closes the queue (the event comes back as an error), well within a second.
#[test]
fn a_full_event_queue_holds_its_sender_back_until_taken_or_closed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (tx, rx) = event_queue();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = std::thread::spawn(move || {
        loop {
            if tx.send(Event::Signal(libc::SIGWINCH)).is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sent.load(Ordering::SeqCst), EVENT_QUEUE);
    for _ in 0..3 {
        assert!(matches!(rx.try_recv(), Ok(Event::Signal(libc::SIGWINCH))));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while sent.load(Ordering::SeqCst) < EVENT_QUEUE + 3 {
        assert!(Instant::now() < deadline, "the sender did not go on");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(sent.load(Ordering::SeqCst), EVENT_QUEUE + 3);
    let closed = Instant::now();
    rx.close();
    sender.join().unwrap();
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(sent.load(Ordering::SeqCst), EVENT_QUEUE + 3);
    // What was queued can still be taken.
    assert_eq!(
        std::iter::from_fn(|| rx.try_recv().ok()).count(),
        EVENT_QUEUE
    );
}
