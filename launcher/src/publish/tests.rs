use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn req(ip: Option<IpAddr>, host_port: HostPort, guest_port: u16, proto: Proto) -> PortRequest {
    PortRequest {
        host_ip: ip,
        host_port,
        guest_port,
        proto,
    }
}

#[test]
fn docker_forms() {
    let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let v6 = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let cases: &[(&str, Vec<PortRequest>)] = &[
        ("80", vec![req(None, HostPort::Any, 80, Proto::Tcp)]),
        (
            "8080:80",
            vec![req(None, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (
            "8080:80/udp",
            vec![req(None, HostPort::Fixed(8080), 80, Proto::Udp)],
        ),
        (
            "8080:80/TCP",
            vec![req(None, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (
            "8080:80/",
            vec![req(None, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (
            "127.0.0.1:8080:80",
            vec![req(lo, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (
            "127.0.0.1::80",
            vec![req(lo, HostPort::Any, 80, Proto::Tcp)],
        ),
        (
            ":8080:80",
            vec![req(None, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (":80", vec![req(None, HostPort::Any, 80, Proto::Tcp)]),
        ("0:80", vec![req(None, HostPort::Any, 80, Proto::Tcp)]),
        (
            "[::1]:8080:80",
            vec![req(v6, HostPort::Fixed(8080), 80, Proto::Tcp)],
        ),
        (
            "::1:8080:80/udp",
            vec![req(v6, HostPort::Fixed(8080), 80, Proto::Udp)],
        ),
        ("[::1]::80", vec![req(v6, HostPort::Any, 80, Proto::Tcp)]),
        (
            "8000-8001:80-81",
            vec![
                req(None, HostPort::Fixed(8000), 80, Proto::Tcp),
                req(None, HostPort::Fixed(8001), 81, Proto::Tcp),
            ],
        ),
        (
            "80-81",
            vec![
                req(None, HostPort::Any, 80, Proto::Tcp),
                req(None, HostPort::Any, 81, Proto::Tcp),
            ],
        ),
        (
            "8000-8009:80",
            vec![req(None, HostPort::Range(8000, 8009), 80, Proto::Tcp)],
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(parse_publish(raw).as_ref(), Ok(want), "{raw}");
    }
}

#[test]
fn malformed_values_say_why() {
    let cases: &[(&str, PublishError)] = &[
        ("", PublishError::NoGuestPort),
        ("8080:", PublishError::NoGuestPort),
        ("8080:/tcp", PublishError::NoGuestPort),
        ("x:80:80", PublishError::BadIp("x".into())),
        ("1.2.3:80:80", PublishError::BadIp("1.2.3".into())),
        ("[::1:80:80", PublishError::BadIp("[::1".into())),
        ("http", PublishError::BadGuestPort("http".into())),
        ("0", PublishError::BadGuestPort("0".into())),
        ("65536", PublishError::BadGuestPort("65536".into())),
        ("8080:-80", PublishError::BadGuestPort("-80".into())),
        ("8080:90-80", PublishError::BadGuestPort("90-80".into())),
        ("8080:+80", PublishError::BadGuestPort("+80".into())),
        ("x:80", PublishError::BadHostPort("x".into())),
        ("70000:80", PublishError::BadHostPort("70000".into())),
        ("8000-8002:80-81", PublishError::RangeLengths),
        ("8080:80/sctp", PublishError::BadProto("sctp".into())),
        ("8080:80/tcp/x", PublishError::BadProto("tcp/x".into())),
    ];
    for (raw, want) in cases {
        assert_eq!(parse_publish(raw).as_ref(), Err(want), "{raw}");
    }
}

#[test]
fn publish_all_skips_ports_published_explicitly() {
    let exposed = vec![
        "80/tcp".to_string(),
        "53/udp".into(),
        "8000-8001/tcp".into(),
    ];
    let explicit = parse_publish("9000:80").unwrap();
    let all = publish_all(&exposed, &explicit).unwrap();
    let got: Vec<(u16, Proto, HostPort)> = all
        .iter()
        .map(|r| (r.guest_port, r.proto, r.host_port))
        .collect();
    assert_eq!(
        got,
        vec![
            (53, Proto::Udp, HostPort::Any),
            (8000, Proto::Tcp, HostPort::Any),
            (8001, Proto::Tcp, HostPort::Any)
        ]
    );
    assert!(publish_all(&["1:80/tcp".to_string()], &[]).is_err());
}

#[test]
fn network_modes() {
    assert_eq!(parse_network("passt"), Some(NetworkMode::Passt));
    assert_eq!(parse_network("bridge"), Some(NetworkMode::Passt));
    assert_eq!(parse_network("none"), Some(NetworkMode::None));
    assert_eq!(parse_network("tap"), Some(NetworkMode::Tap(None)));
    assert_eq!(
        parse_network("tap:hp0"),
        Some(NetworkMode::Tap(Some("hp0".into())))
    );
    assert_eq!(parse_network("host"), None);
}

/// Random strings never panic the parser, and what parses has a non-zero guest port.
#[test]
fn random_values_never_panic() {
    let alphabet = b"0123456789:-/[]abtcpu.";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 14) as usize;
        let s: String = (0..len)
            .map(|i| char::from(alphabet[((seed >> (i * 4)) % alphabet.len() as u64) as usize]))
            .collect();
        if let Ok(reqs) = parse_publish(&s) {
            assert!(
                !reqs.is_empty() && reqs.iter().all(|r| r.guest_port != 0),
                "{s}"
            );
        }
    }
}
