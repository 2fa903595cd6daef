//! The run spec (what to run in the guest, from the image config) and launch-time overrides.
//!
//! The builder writes the spec into the manifest and, as `/hyperpod/spec.json`, into the
//! initramfs; the launcher passes [`Overrides`] as `/hyperpod/overrides.json` in a second cpio
//! archive appended to the initramfs (see `docs/guest-protocol.md`); init merges the two.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Path of the run spec inside the initramfs.
pub const SPEC_PATH: &str = "/hyperpod/spec.json";
/// Path of the launch-time overrides inside the (appended) initramfs.
pub const OVERRIDES_PATH: &str = "/hyperpod/overrides.json";
/// Largest spec or overrides file init accepts, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// What the image says to run and how, in Docker's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// The image's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The image's `Cmd`: arguments after the entrypoint (or the command, with no entrypoint).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs, in order.
    pub env: Vec<String>,
    /// Working directory (absolute); empty means `/`.
    pub working_dir: String,
    /// `uid`, `uid:gid`, `name` or `name:group`; empty means root.
    pub user: String,
    /// Guest hostname; empty lets init choose.
    pub hostname: String,
    /// Signal that asks the app to stop (`SIGTERM` when empty).
    pub stop_signal: String,
    /// `PORT/PROTO` entries, sorted.
    pub exposed_ports: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
}

/// Changes requested at launch (`hyperlaunch -e`, `--entrypoint`, `-- ARGS`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    /// `KEY=VALUE` pairs added to (or replacing) the spec's env.
    pub env: Vec<String>,
    /// Replaces the spec's `cmd`.
    pub args: Option<Vec<String>>,
    /// Replaces the spec's entrypoint and resets `cmd` (Docker's `--entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    /// The launcher gives the app a terminal (`-t`): init runs it on a pseudo-terminal whose
    /// output it relays as the app's stdout. Otherwise the app's stdout and stderr are pipes,
    /// relayed apart, as with `docker run` without `-t`.
    pub tty: bool,
    /// The launcher forwards its stdin (`-i`): the app reads it from a pipe (or its terminal),
    /// ending with end of file. Otherwise the app's stdin is `/dev/null`, as Docker's.
    pub interactive: bool,
    /// `TERM` for an app with a terminal when neither the image nor `-e` sets one: the host's
    /// `TERM`, else `xterm` (Docker's).
    pub term: Option<String>,
    /// The host terminal's size at launch as `[rows, cols]`, for an app with a terminal.
    pub window_size: Option<[u16; 2]>,
    /// Size of the writable layer (the overlay's tmpfs upper) in bytes (`hyperlaunch
    /// --storage-opt size=`); `None` leaves init's default, [`DEFAULT_WRITABLE_SIZE`]. Left out
    /// of the JSON when unset, so a pod whose init predates the field still boots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writable_size: Option<u64>,
    /// The guest's network interface ([`crate::protocol::NET_INTERFACE`]) as init configures
    /// it (`hyperlaunch --network`); `None`: no interface, loopback only. Left out of the JSON
    /// when unset, like `writable_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
}

/// How init configures the guest's one network interface: static addresses chosen by the
/// launcher and its network backend (no DHCP on the boot path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The interface's MTU.
    pub mtu: u32,
    /// The IPv4 address, prefix and default gateway, if any.
    pub ipv4: Option<InterfaceAddress>,
    /// The IPv6 address, prefix and default gateway, if any.
    pub ipv6: Option<InterfaceAddress>,
    /// Name servers for `/etc/resolv.conf`, in order.
    pub dns: Vec<IpAddr>,
    /// Search domains for `/etc/resolv.conf`.
    pub search: Vec<String>,
}

/// One address of the interface with its prefix length and the default route's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceAddress {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// The writable layer's size when the launch does not choose one: half the guest's memory, as a
/// tmpfs `size=` value (what tmpfs takes by default, said explicitly so `statfs` on `/` reports
/// it as the root's size and free space).
pub const DEFAULT_WRITABLE_SIZE: &str = "50%";
/// The smallest writable layer a launch may ask for: init writes `/etc/hosts` and
/// `/etc/hostname` there before the app starts.
pub const MIN_WRITABLE_SIZE: u64 = 1 << 20;

impl Overrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_rejects_unknown_fields() {
        let spec = RunSpec {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/bin".into()],
            labels: [("a".to_string(), "b".to_string())].into(),
            ..RunSpec::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<RunSpec>(&json).unwrap(), spec);
        assert!(serde_json::from_str::<RunSpec>(r#"{"entrypont":[]}"#).is_err());
        assert!(Overrides::default().is_empty());
        let o: Overrides = serde_json::from_str(r#"{"entrypoint":[]}"#).unwrap();
        assert_eq!(o.entrypoint, Some(vec![]));
        // An unset writable size is not written (older inits refuse unknown fields).
        let json = serde_json::to_string(&Overrides::default()).unwrap();
        assert!(!json.contains("writable_size"), "{json}");
        let o: Overrides = serde_json::from_str(r#"{"writable_size":1048576}"#).unwrap();
        assert_eq!(o.writable_size, Some(MIN_WRITABLE_SIZE));
        // No network: nothing written; a network round-trips with its addresses as text.
        assert!(!json.contains("network"), "{json}");
        let net = Overrides {
            network: Some(NetworkConfig {
                mtu: 65520,
                ipv4: Some(InterfaceAddress {
                    address: "10.0.2.15".parse().unwrap(),
                    prefix: 24,
                    gateway: "10.0.2.2".parse().unwrap(),
                }),
                ipv6: None,
                dns: vec!["10.0.2.3".parse().unwrap()],
                search: vec![],
            }),
            ..Overrides::default()
        };
        let json = serde_json::to_string(&net).unwrap();
        assert!(json.contains(r#""address":"10.0.2.15""#), "{json}");
        assert_eq!(serde_json::from_str::<Overrides>(&json).unwrap(), net);
    }
}
