//! The relay's output window, with pipes and a socketpair for the stdio device.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use pod::protocol::stdio::{Credits, MIN_WINDOW};

use super::*;

/// A relay of one output pipe (the app's stdout) to a socketpair standing for the device.
fn relay(window: Option<u32>) -> (Relay, std::fs::File, UnixStream) {
    let (out_r, out_w) = pipe().unwrap();
    set_nonblocking(out_r.as_raw_fd());
    let (host, guest) = UnixStream::pair().unwrap();
    host.set_nonblocking(true).unwrap();
    let r = Relay::new(
        OwnedFd::from(guest),
        None,
        None,
        [Some(out_r), None],
        false,
        window.map(Window::new),
    );
    (r, std::fs::File::from(out_w), host)
}

fn output_polled(r: &Relay) -> bool {
    r.poll_slots().iter().any(|(s, _)| *s == Slot::Output(0))
}

/// Everything the host end can read now, fed to `d`; returns the payload bytes.
fn host_reads(host: &mut UnixStream, d: &mut Decoder) -> usize {
    let mut payload = 0;
    let mut buf = [0u8; 65536];
    while let Ok(n) = host.read(&mut buf) {
        if n == 0 {
            break;
        }
        d.feed(&buf[..n], |p| {
            if let Piece::Data(Kind::Stdout, data) = p {
                payload += data.len();
            }
        });
    }
    payload
}

#[test]
fn output_waits_for_credit_when_the_window_is_full() {
    let (mut r, mut app, mut host) = relay(Some(MIN_WINDOW));
    app.write_all(&[7u8; 20_000]).unwrap();
    let (mut d, mut credits, mut got) = (Decoder::default(), Credits::default(), 0);
    let (mut waits, mut credited) = (0, 0u64);
    while got < 20_000 {
        // What poll would let the relay do: read the app while the window has room.
        while output_polled(&r) && r.forward_output(Some(0)) {}
        got += host_reads(&mut host, &mut d);
        if got < 20_000 {
            // The app has more, and the relay stopped: only for want of room.
            assert_eq!(r.room(), 0, "stopped with room, {got} bytes out");
            assert!(
                !output_polled(&r),
                "a full window still polls the app's pipe"
            );
        }
        // Never more than the window between the relay and the host's credits.
        assert!(d.cost() - credited <= u64::from(MIN_WINDOW));
        if let Some(c) = credits.due(d.cost(), MIN_WINDOW) {
            r.credit(c);
            credited += u64::from(c);
            waits += 1;
        }
        assert!(waits < 100, "no progress: {got} bytes");
    }
    assert_eq!(got, 20_000);
    assert!(
        waits >= 4,
        "a 4 KiB window took only {waits} credits for 20 KB"
    );
}

#[test]
fn without_a_window_output_flows_without_credit() {
    let (mut r, mut app, mut host) = relay(None);
    app.write_all(&[7u8; 20_000]).unwrap();
    let mut d = Decoder::default();
    let mut got = 0;
    for _ in 0..10 {
        if output_polled(&r) {
            r.ready(Slot::Output(0), libc::POLLIN);
        }
        got += host_reads(&mut host, &mut d);
    }
    assert_eq!(got, 20_000);
}

#[test]
fn the_drain_passes_everything_on_when_no_one_can_credit() {
    // No control channel in a test process: the drain drops the window instead of waiting.
    let (mut r, mut app, mut host) = relay(Some(MIN_WINDOW));
    app.write_all(&[7u8; 20_000]).unwrap();
    drop(app);
    r.drain(&mut LineSplitter::default());
    assert_eq!(host_reads(&mut host, &mut Decoder::default()), 20_000);
    assert!(!r.open(Some(0)), "the pipe's end was read");
}
