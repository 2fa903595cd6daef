//! Resolving Docker's `User` (`uid`, `uid:gid`, `name`, `name:group`) in the image's
//! `/etc/passwd` and `/etc/group`, as runc does.

use std::io::Read;

use thiserror::Error;

/// Largest passwd/group file init reads.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// One `/etc/passwd` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Who the app runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (passed to `setgroups`).
    pub groups: Vec<u32>,
    /// Home directory (`/` when the user has no passwd entry).
    pub home: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
    #[error("user {0:?} is out of range")]
    BadId(String),
    #[error("cannot read {path}: {kind}")]
    Read {
        path: &'static str,
        kind: std::io::ErrorKind,
    },
}

/// Parses `/etc/passwd`; malformed lines and comments are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group`; malformed lines and comments are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// A numeric id, `None` for a name; all-digit strings that overflow are an error.
fn numeric(s: &str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| UserError::BadId(s.to_string()))
}

/// Resolves `spec` (`""`, `uid`, `uid:gid`, `name`, `name:group`) against the image's databases.
/// A numeric user or group need not exist; a name must. Without an explicit group, the
/// supplementary groups are those listing the user as a member.
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<ExecUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match numeric(user)? {
        Some(uid) => passwd.iter().find(|p| p.uid == uid),
        None => Some(
            passwd
                .iter()
                .find(|p| p.name == user)
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        ),
    };
    let mut exec = match entry {
        Some(p) => ExecUser {
            uid: p.uid,
            gid: p.gid,
            groups: Vec::new(),
            home: p.home.clone(),
        },
        None => ExecUser {
            uid: numeric(user)?.unwrap_or(0),
            gid: 0,
            groups: Vec::new(),
            home: "/".to_string(),
        },
    };
    match group {
        Some(g) if !g.is_empty() => {
            exec.gid = match numeric(g)? {
                Some(gid) => gid,
                None => {
                    groups
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| UserError::NoGroup(g.to_string()))?
                        .gid
                }
            };
        }
        _ => {
            if let Some(p) = entry {
                for g in groups.iter().filter(|g| g.members.contains(&p.name)) {
                    if !exec.groups.contains(&g.gid) {
                        exec.groups.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(exec)
}

/// Reads a database from the (new) root; a missing file reads as empty.
fn read_db(path: &'static str) -> Result<String, UserError> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => f
            .take(MAX_DB_BYTES)
            .read_to_end(&mut bytes)
            .map(|_| ())
            .map_err(|e| UserError::Read {
                path,
                kind: e.kind(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(UserError::Read {
                path,
                kind: e.kind(),
            });
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Resolves `spec` in the image's `/etc/passwd` and `/etc/group`.
pub fn lookup(spec: &str) -> Result<ExecUser, UserError> {
    let passwd = parse_passwd(&read_db("/etc/passwd")?);
    let groups = parse_group(&read_db("/etc/group")?);
    resolve(spec, &passwd, &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        svc:x:999:50::/var/svc:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        audio:x:29:svc, app\n\
        app:x:1000:\n\
        staff:x:50:\n\
        bad:x:notnum:app\n";

    fn res(spec: &str) -> Result<ExecUser, UserError> {
        resolve(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_databases() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].home, "/home/app");
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 5);
        assert_eq!(g[2].members, ["svc", "app"]);
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        let root = res("").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(root.groups, [10]);
        let app = res("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.groups, [10, 29]);
        assert_eq!(app.home, "/home/app");
        // A number that has an entry gets its home, gid and groups.
        assert_eq!(res("1000").unwrap(), app);
        // A number without an entry is fine: gid 0, home /.
        let anon = res("4242").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.home.as_str()), (4242, 0, "/"));
        assert!(anon.groups.is_empty());
        // An explicit group replaces the primary group and drops supplementary ones.
        let g = res("app:staff").unwrap();
        assert_eq!((g.uid, g.gid), (1000, 50));
        assert!(g.groups.is_empty());
        assert_eq!(res("4242:77").unwrap().gid, 77);
        assert_eq!(res("svc:0").unwrap().gid, 0);
        assert_eq!(res(":50").unwrap().uid, 0);
    }

    #[test]
    fn missing_users_and_groups_are_errors() {
        assert_eq!(res("nobody"), Err(UserError::NoUser("nobody".into())));
        assert_eq!(
            res("app:nogroup"),
            Err(UserError::NoGroup("nogroup".into()))
        );
        assert_eq!(
            res("99999999999"),
            Err(UserError::BadId("99999999999".into()))
        );
        // No databases at all: numbers still work, names do not.
        assert_eq!(resolve("0", &[], &[]).unwrap().home, "/");
        assert!(resolve("app", &[], &[]).is_err());
        let err = crate::InitError::User(UserError::NoUser("x".into()));
        assert_eq!(err.exit_code(), 125);
    }
}
