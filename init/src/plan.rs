//! Docker's run rules, as pure functions: which argv to run, with which environment, as whom and
//! where, from the image's [`RunSpec`] and the launch-time [`Overrides`].

use pod::spec::{DEFAULT_WRITABLE_SIZE, MIN_WRITABLE_SIZE, Overrides, RunSpec};
use thiserror::Error;

/// `PATH` when neither the image nor the overrides set one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Hostname when neither the image nor the overrides choose one.
pub const DEFAULT_HOSTNAME: &str = "hyperpod";
/// Longest hostname Linux accepts.
pub const MAX_HOSTNAME: usize = 64;

/// What to run, before the user is looked up in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs, spec order, overrides applied (defaults are added once the user's home
    /// is known, see [`add_defaults`]).
    pub env: Vec<String>,
    /// `uid`, `uid:gid`, `name`, `name:group`; empty means root.
    pub user: String,
    /// Absolute working directory.
    pub workdir: String,
    pub hostname: String,
    /// The launcher gave the app a terminal (`-t`): keep the console cooked; otherwise raw.
    pub tty: bool,
    /// The tmpfs `size=` of the writable layer: bytes, or the default share of memory.
    pub writable_size: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no command to run (empty entrypoint and cmd)")]
    NoCommand,
    #[error("empty command name")]
    EmptyCommand,
    #[error("env entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkdir(String),
    #[error("hostname {0:?} is invalid")]
    BadHostname(String),
    #[error("writable layer size {0} is below {min} bytes", min = MIN_WRITABLE_SIZE)]
    SmallWritable(u64),
}

/// The argv: entrypoint + cmd; `args` replaces cmd; an entrypoint override resets cmd.
pub fn command(spec: &RunSpec, ov: &Overrides) -> Result<Vec<String>, PlanError> {
    let (entrypoint, cmd) = match &ov.entrypoint {
        Some(e) => (e.as_slice(), &[][..]),
        None => (spec.entrypoint.as_slice(), spec.cmd.as_slice()),
    };
    let cmd = ov.args.as_deref().unwrap_or(cmd);
    let argv: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    match argv.first() {
        None => Err(PlanError::NoCommand),
        Some(first) if first.is_empty() => Err(PlanError::EmptyCommand),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => Err(PlanError::Nul("argument")),
        Some(_) => Ok(argv),
    }
}

/// The key of a `KEY=VALUE` entry.
fn key_of(entry: &str) -> Result<&str, PlanError> {
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() && !entry.contains('\0') => Ok(key),
        _ => Err(PlanError::BadEnv(entry.to_string())),
    }
}

/// `base` with each of `over` replacing the entry with the same key in place, or appended.
pub fn merge_env(base: &[String], over: &[String]) -> Result<Vec<String>, PlanError> {
    let mut env: Vec<String> = Vec::with_capacity(base.len() + over.len());
    for entry in base.iter().chain(over) {
        let key = key_of(entry)?;
        match env.iter_mut().find(|e| key_of(e) == Ok(key)) {
            Some(slot) => *slot = entry.clone(),
            None => env.push(entry.clone()),
        }
    }
    Ok(env)
}

/// The value of `key` in `env`.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.split_once('=').and_then(|(k, v)| (k == key).then_some(v)))
}

/// Adds Docker's defaults the environment lacks: `PATH`, `HOSTNAME`, `HOME`.
pub fn add_defaults(env: &mut Vec<String>, hostname: &str, home: &str) {
    for (key, value) in [
        ("PATH", DEFAULT_PATH),
        ("HOSTNAME", hostname),
        ("HOME", home),
    ] {
        if env_get(env, key).is_none() {
            env.push(format!("{key}={value}"));
        }
    }
}

/// Applies the overrides to the spec.
pub fn plan(spec: &RunSpec, ov: &Overrides) -> Result<Plan, PlanError> {
    let argv = command(spec, ov)?;
    let mut env = merge_env(&spec.env, &ov.env)?;
    if ov.tty && env_get(&env, "TERM").is_none() {
        // Docker's rule: an app with a terminal gets TERM unless the image or `-e` set one;
        // the launcher passes the host's.
        let term = ov
            .term
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or("xterm");
        env.push(format!("TERM={term}"));
    }
    let user = ov.user.clone().unwrap_or_else(|| spec.user.clone());
    if user.contains('\0') {
        return Err(PlanError::Nul("user"));
    }
    let workdir = ov
        .workdir
        .clone()
        .unwrap_or_else(|| spec.working_dir.clone());
    let workdir = if workdir.is_empty() {
        "/".to_string()
    } else {
        workdir
    };
    if !workdir.starts_with('/') {
        return Err(PlanError::RelativeWorkdir(workdir));
    }
    if workdir.contains('\0') {
        return Err(PlanError::Nul("working directory"));
    }
    let hostname = ov.hostname.clone().unwrap_or_else(|| spec.hostname.clone());
    let hostname = if hostname.is_empty() {
        DEFAULT_HOSTNAME.to_string()
    } else {
        hostname
    };
    if hostname.len() > MAX_HOSTNAME
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(PlanError::BadHostname(hostname));
    }
    let writable_size = match ov.writable_size {
        None => DEFAULT_WRITABLE_SIZE.to_string(),
        Some(n) if n < MIN_WRITABLE_SIZE => return Err(PlanError::SmallWritable(n)),
        Some(n) => n.to_string(),
    };
    Ok(Plan {
        argv,
        env,
        user,
        workdir,
        hostname,
        tty: ov.tty,
        writable_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn spec(entrypoint: &[&str], cmd: &[&str]) -> RunSpec {
        RunSpec {
            entrypoint: v(entrypoint),
            cmd: v(cmd),
            ..RunSpec::default()
        }
    }

    #[test]
    fn entrypoint_cmd_and_override_rules() {
        let none = Overrides::default();
        let s = spec(&["/bin/app", "-v"], &["serve", "--port=1"]);
        assert_eq!(
            command(&s, &none).unwrap(),
            ["/bin/app", "-v", "serve", "--port=1"]
        );
        // args replace cmd only.
        let args = Overrides {
            args: Some(v(&["check"])),
            ..Overrides::default()
        };
        assert_eq!(command(&s, &args).unwrap(), ["/bin/app", "-v", "check"]);
        // entrypoint override resets cmd.
        let ep = Overrides {
            entrypoint: Some(v(&["/bin/sh"])),
            ..Overrides::default()
        };
        assert_eq!(command(&s, &ep).unwrap(), ["/bin/sh"]);
        // both: new entrypoint + args.
        let both = Overrides {
            entrypoint: Some(v(&["/bin/sh", "-c"])),
            args: Some(v(&["echo hi"])),
            ..Overrides::default()
        };
        assert_eq!(command(&s, &both).unwrap(), ["/bin/sh", "-c", "echo hi"]);
        // no entrypoint: cmd is the command; args replace it.
        let c = spec(&[], &["sh", "-c", "true"]);
        assert_eq!(command(&c, &none).unwrap(), ["sh", "-c", "true"]);
        assert_eq!(command(&c, &args).unwrap(), ["check"]);
        // an empty entrypoint override with no args leaves nothing to run.
        let empty = Overrides {
            entrypoint: Some(vec![]),
            ..Overrides::default()
        };
        assert_eq!(command(&s, &empty), Err(PlanError::NoCommand));
        assert_eq!(command(&spec(&[], &[]), &none), Err(PlanError::NoCommand));
        assert_eq!(
            command(&spec(&[""], &["x"]), &none),
            Err(PlanError::EmptyCommand)
        );
        assert_eq!(
            command(&spec(&["a"], &["b\0"]), &none),
            Err(PlanError::Nul("argument"))
        );
    }

    #[test]
    fn env_merge_replaces_in_place_and_keeps_order() {
        let base = v(&["A=1", "B=2", "C=3"]);
        let merged = merge_env(&base, &v(&["B=20", "D=4", "A=", "D=5"])).unwrap();
        assert_eq!(merged, ["A=", "B=20", "C=3", "D=5"]);
        // Values may contain '='.
        assert_eq!(merge_env(&v(&["X=a=b"]), &[]).unwrap(), ["X=a=b"]);
        for bad in ["NOVALUE", "=x", "A\0=1"] {
            assert_eq!(
                merge_env(&base, &v(&[bad])),
                Err(PlanError::BadEnv(bad.into()))
            );
        }
        assert_eq!(env_get(&merged, "B"), Some("20"));
        assert_eq!(env_get(&merged, "Z"), None);
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut env = v(&["PATH=/opt/bin", "HOME=/data"]);
        add_defaults(&mut env, "box", "/root");
        assert_eq!(env, ["PATH=/opt/bin", "HOME=/data", "HOSTNAME=box"]);
        let mut env = vec![];
        add_defaults(&mut env, "box", "/home/app");
        assert_eq!(
            env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "HOME=/home/app".into()
            ]
        );
    }

    #[test]
    fn plan_applies_overrides() {
        let s = RunSpec {
            cmd: v(&["app"]),
            env: v(&["A=1"]),
            user: "app".into(),
            working_dir: "/srv".into(),
            hostname: "web".into(),
            ..RunSpec::default()
        };
        let p = plan(&s, &Overrides::default()).unwrap();
        assert_eq!((p.user.as_str(), p.workdir.as_str()), ("app", "/srv"));
        assert_eq!(p.hostname, "web");
        let ov = Overrides {
            env: v(&["A=2"]),
            user: Some("0:0".into()),
            workdir: Some("/tmp/w".into()),
            hostname: Some("other".into()),
            ..Overrides::default()
        };
        let p = plan(&s, &ov).unwrap();
        assert_eq!(p.env, ["A=2"]);
        assert_eq!(
            (p.user.as_str(), p.workdir.as_str(), p.hostname.as_str()),
            ("0:0", "/tmp/w", "other")
        );
        let defaults = plan(&spec(&[], &["x"]), &Overrides::default()).unwrap();
        assert_eq!(defaults.workdir, "/");
        assert_eq!(defaults.hostname, DEFAULT_HOSTNAME);
        assert_eq!(defaults.user, "");
        assert!(!defaults.tty);
        assert_eq!(defaults.writable_size, "50%");
        let sized = Overrides {
            writable_size: Some(64 << 20),
            ..Overrides::default()
        };
        assert_eq!(plan(&s, &sized).unwrap().writable_size, "67108864");
        let tiny = Overrides {
            writable_size: Some(4096),
            ..Overrides::default()
        };
        assert_eq!(plan(&s, &tiny), Err(PlanError::SmallWritable(4096)));
        let tty = Overrides {
            tty: true,
            ..Overrides::default()
        };
        let p = plan(&s, &tty).unwrap();
        assert!(p.tty);
        assert!(p.env.contains(&"TERM=xterm".to_string()));
        let host_term = Overrides {
            tty: true,
            term: Some("screen-256color".into()),
            ..Overrides::default()
        };
        assert!(
            plan(&s, &host_term)
                .unwrap()
                .env
                .contains(&"TERM=screen-256color".to_string())
        );
        let own_term = Overrides {
            env: vec!["TERM=dumb".into()],
            ..host_term
        };
        let p = plan(&s, &own_term).unwrap();
        assert_eq!(p.env.iter().filter(|e| e.starts_with("TERM=")).count(), 1);
        assert!(p.env.contains(&"TERM=dumb".to_string()));
        assert!(!defaults.env.iter().any(|e| e.starts_with("TERM=")));
        let rel = Overrides {
            workdir: Some("srv".into()),
            ..Overrides::default()
        };
        assert_eq!(
            plan(&s, &rel),
            Err(PlanError::RelativeWorkdir("srv".into()))
        );
        let host = Overrides {
            hostname: Some("a b".into()),
            ..Overrides::default()
        };
        assert!(matches!(plan(&s, &host), Err(PlanError::BadHostname(_))));
    }
}
