use std::net::{Ipv4Addr, TcpListener};

use super::*;
use crate::cli::{Command, parse};

fn config(args: &[&str]) -> LaunchConfig {
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    all.push("app.pod".into());
    match parse(&all).unwrap() {
        Command::Launch(c) => *c,
        _ => panic!("not a launch"),
    }
}

#[test]
fn default_network_is_passt_and_publishing_needs_one() {
    assert_eq!(mode(&config(&[])).unwrap(), NetworkMode::Passt);
    assert_eq!(mode(&config(&["-P"])).unwrap(), NetworkMode::Passt);
    let none = config(&["--network", "none"]);
    assert_eq!(mode(&none).unwrap(), NetworkMode::None);
    let e = mode(&config(&["--network", "none", "-p", "80"])).unwrap_err();
    assert!(matches!(e, NetError::PublishWithoutNetwork), "{e}");
}

#[test]
fn tap_mode_and_a_bad_name_refused_before_any_device() {
    let tap = config(&["--network", "tap:hp0", "-p", "80"]);
    assert_eq!(mode(&tap).unwrap(), NetworkMode::Tap(Some("hp0".into())));
    let bad = config(&["--network", "tap:a/b"]);
    let e = begin(&bad, Engine::Kvm, &[]).err().expect("refused");
    assert!(matches!(e, NetError::TapName(ref n) if n == "a/b"), "{e}");
}

#[test]
fn reserved_sockets_go_to_the_forwarder_in_order() {
    let reqs = requests(
        &config(&["-p", "127.0.0.1::80", "-p", "127.0.0.1::53/udp"]),
        &[],
    )
    .unwrap();
    let r = reserve(&reqs).unwrap();
    let published = r.published.clone();
    let sockets = r.into_sockets();
    let got: Vec<(Proto, u16)> = sockets.iter().map(|(_, p, g)| (*p, *g)).collect();
    assert_eq!(got, [(Proto::Tcp, 80), (Proto::Udp, 53)]);
    // Still held: the forwarder listens on them.
    assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, published[0].host_port)).is_err());
}

#[test]
fn the_kvm_engine_link_is_ethernet_sized_and_qemu_takes_passts_default() {
    assert_eq!(mtu(Engine::Kvm), 1500);
    assert_eq!(mtu(Engine::Qemu), MTU_QEMU);
    assert_eq!(guest_config(mtu(Engine::Kvm)).mtu, 1500);
}

#[test]
fn publish_all_adds_exposed_ports_after_explicit_ones() {
    let cfg = config(&["-p", "9000:80", "-P"]);
    let reqs = requests(&cfg, &["80/tcp".into(), "443/tcp".into()]).unwrap();
    let got: Vec<(HostPort, u16)> = reqs.iter().map(|r| (r.host_port, r.guest_port)).collect();
    assert_eq!(got, vec![(HostPort::Fixed(9000), 80), (HostPort::Any, 443)]);
    // Without -P the exposed ports are not published.
    assert_eq!(requests(&config(&[]), &["80/tcp".into()]).unwrap(), vec![]);
}

#[test]
fn a_port_in_use_is_refused_and_free_ports_are_chosen() {
    let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = busy.local_addr().unwrap().port();
    let reqs = publish::parse_publish(&format!("{port}:80")).unwrap();
    let e = reserve(&reqs).err().expect("the port is in use");
    assert!(matches!(e, NetError::InUse(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!("port 80/tcp -> 0.0.0.0:{port} is already in use")
    );

    // Any: a free port, held until released; a range skips the busy port.
    let reqs = publish::parse_publish("80").unwrap();
    let mut r = reserve(&reqs).unwrap();
    let chosen = r.published[0].host_port;
    assert_ne!(chosen, 0);
    assert!(TcpListener::bind((Ipv4Addr::UNSPECIFIED, chosen)).is_err());
    r.release();
    assert!(TcpListener::bind((Ipv4Addr::UNSPECIFIED, chosen)).is_ok());

    let next = port.checked_add(1).expect("an ephemeral port below 65535");
    let reqs = publish::parse_publish(&format!("{port}-{next}:80")).unwrap();
    match reserve(&reqs) {
        Ok(r) => assert_eq!(r.published[0].host_port, next),
        // Someone else may hold `next` by chance.
        Err(e) => assert!(matches!(e, NetError::RangeFull(..)), "{e}"),
    }
    // A one-port range is that port.
    let e = reserve(&publish::parse_publish(&format!("{port}-{port}:80")).unwrap())
        .err()
        .expect("the only port of the range is in use");
    assert!(matches!(e, NetError::InUse(..)), "{e}");
    // A range of busy ports: none free. (Two adjacent busy ports: bind one, then its neighbour.)
    let pair = (0..50).find_map(|_| {
        let a = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        let pa = a.local_addr().ok()?.port();
        let b = TcpListener::bind((Ipv4Addr::UNSPECIFIED, pa.checked_add(1)?)).ok()?;
        Some((a, b, pa))
    });
    let (_a, _b, lo) = pair.expect("two adjacent free ports");
    let e = reserve(&publish::parse_publish(&format!("{lo}-{}:80", lo + 1)).unwrap())
        .err()
        .expect("both ports of the range are in use");
    assert!(matches!(e, NetError::RangeFull(..)), "{e}");
}

#[test]
fn guest_addressing_matches_what_passt_is_told() {
    let g = guest_config(MTU_QEMU);
    let v4 = g.ipv4.unwrap();
    assert_eq!(v4.address, IpAddr::V4(GUEST_IPV4));
    assert_eq!(v4.gateway, IpAddr::V4(GATEWAY_IPV4));
    assert_eq!(g.dns, vec![IpAddr::V4(DNS_IPV4)]);
    assert_eq!(g.mtu, MTU_QEMU);
    assert_eq!(mac_text(GUEST_MAC), "02:68:70:00:00:01");
}

#[test]
fn mappings_print_as_docker_port_does() {
    let p = Published {
        host_ip: None,
        host_port: 8080,
        guest_port: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(p.to_string(), "80/tcp -> 0.0.0.0:8080");
    let v6 = Published {
        host_ip: Some("::1".parse().unwrap()),
        proto: Proto::Udp,
        ..p
    };
    assert_eq!(v6.to_string(), "80/udp -> [::1]:8080");
}

/// Whether this host has IPv6 (`[::]` can be bound).
fn have_ipv6() -> bool {
    std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).is_ok()
}

#[test]
fn no_host_address_holds_both_families_and_an_address_only_itself() {
    use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
    let v6 = have_ipv6();
    // No address: 0.0.0.0 and [::] (IPv6 alone), for TCP and UDP alike; IPv4 alone without
    // IPv6 on the host.
    for spec in ["80", "53/udp"] {
        let r = reserve(&publish::parse_publish(spec).unwrap()).unwrap();
        let port = r.published[0].host_port;
        let sockets = r.into_sockets();
        assert_eq!(sockets.len(), if v6 { 2 } else { 1 }, "{spec}");
        let tcp = spec == "80";
        let free = |addr: SocketAddr| {
            if tcp {
                TcpListener::bind(addr).is_ok()
            } else {
                UdpSocket::bind(addr).is_ok()
            }
        };
        assert!(
            !free(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
            "{spec}"
        );
        if v6 {
            assert!(
                !free(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))),
                "{spec}"
            );
        }
    }
    // An address: that address alone.
    let r = reserve(&publish::parse_publish("127.0.0.1::80").unwrap()).unwrap();
    let port = r.published[0].host_port;
    assert_eq!(r.into_sockets().len(), 1);
    if v6 {
        assert!(TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok());
    }
}

#[test]
fn a_port_taken_on_ipv6_alone_is_refused_naming_that_address() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    if !have_ipv6() {
        hyperpod_tests::skip::skipped(
            "net::tests::a_port_taken_on_ipv6_alone_is_refused_naming_that_address",
            "this host has no IPv6 (cannot bind [::])",
        );
        return;
    }
    // Another process's IPv6-only listener on [::] (as Docker's proxy binds one).
    let holder = bind_one(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), Proto::Tcp).unwrap();
    let port = bound_port(&holder).unwrap();
    let e = reserve(&publish::parse_publish(&format!("{port}:80")).unwrap())
        .err()
        .expect("[::] is taken");
    assert!(
        matches!(e, NetError::InUse(p) if p.host_ip == Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))
    );
    assert_eq!(
        e.to_string(),
        format!("port 80/tcp -> [::]:{port} is already in use")
    );
    // IPv4 alone does not meet it.
    assert!(reserve(&publish::parse_publish(&format!("127.0.0.1:{port}:80")).unwrap()).is_ok());
}
