//! The confinement of a run's command, as Docker's default: the capability sets cut to
//! fourteen, a seccomp filter that refuses what only the host's administrator should do, the
//! kernel's sensitive `/proc` and `/sys` files masked or read-only. `--privileged` gives it
//! all back; `--cap-add`, `--cap-drop` and `--security-opt` adjust it. The profile is data,
//! here in one place; [`super::init`] applies it in the order [`confine`] gives.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use caps::Capability;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Result, UserError, bail};

/// Docker's default capabilities.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_MKNOD,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
];

/// Files of `/proc` and `/sys` a container must not read: a file gets `/dev/null` bound
/// over it, a directory an empty read-only tmpfs (as the OCI runtime default).
pub const MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// What stays readable but becomes read-only.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The namespace flags of clone and unshare: a new user namespace needs no capability, so
/// only the filter keeps a container from making one (and from it, the rest).
const NEW_NAMESPACES: [u64; 8] = [
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWTIME as u64,
];

/// System calls refused with EPERM, each group unless the run keeps the capability that
/// names it (as Docker's default profile includes them by capability); `None`: always.
fn denied() -> Vec<(Option<Capability>, Vec<i64>)> {
    use Capability::*;
    let mut rawio = vec![];
    #[cfg(target_arch = "x86_64")]
    rawio.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    vec![
        (
            None,
            vec![
                libc::SYS_kexec_load,
                libc::SYS_kexec_file_load,
                libc::SYS_keyctl,
                libc::SYS_add_key,
                libc::SYS_request_key,
                libc::SYS_swapon,
                libc::SYS_swapoff,
                libc::SYS_userfaultfd,
                libc::SYS_nfsservctl,
            ],
        ),
        (
            Some(CAP_SYS_ADMIN),
            vec![
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_pivot_root,
                libc::SYS_move_mount,
                libc::SYS_open_tree,
                libc::SYS_fsopen,
                libc::SYS_fsconfig,
                libc::SYS_fsmount,
                libc::SYS_fspick,
                libc::SYS_mount_setattr,
                libc::SYS_bpf,
                libc::SYS_perf_event_open,
                libc::SYS_fanotify_init,
                libc::SYS_lookup_dcookie,
                libc::SYS_quotactl,
                libc::SYS_setns,
            ],
        ),
        (Some(CAP_SYS_BOOT), vec![libc::SYS_reboot]),
        (
            Some(CAP_SYS_MODULE),
            vec![
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_delete_module,
            ],
        ),
        (Some(CAP_SYS_PACCT), vec![libc::SYS_acct]),
        (
            Some(CAP_SYS_PTRACE),
            vec![
                libc::SYS_kcmp,
                libc::SYS_pidfd_getfd,
                libc::SYS_process_vm_readv,
                libc::SYS_process_vm_writev,
                libc::SYS_ptrace,
            ],
        ),
        (Some(CAP_SYS_RAWIO), rawio),
        (
            Some(CAP_SYS_TIME),
            vec![
                libc::SYS_settimeofday,
                libc::SYS_clock_settime,
                libc::SYS_clock_adjtime,
                libc::SYS_adjtimex,
            ],
        ),
        (Some(CAP_SYS_TTY_CONFIG), vec![libc::SYS_vhangup]),
        (Some(CAP_SYSLOG), vec![libc::SYS_syslog]),
        (Some(CAP_DAC_READ_SEARCH), vec![libc::SYS_open_by_handle_at]),
        (
            Some(CAP_SYS_NICE),
            vec![
                libc::SYS_mbind,
                libc::SYS_set_mempolicy,
                libc::SYS_migrate_pages,
                libc::SYS_move_pages,
            ],
        ),
    ]
}

/// How a run's command is confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The capabilities kept in every set (all of them when privileged).
    pub caps: HashSet<Capability>,
    /// Every capability, no filter, nothing masked.
    pub privileged: bool,
    pub seccomp: bool,
    pub no_new_privs: bool,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile {
            caps: DEFAULT_CAPS.into_iter().collect(),
            privileged: false,
            seccomp: true,
            no_new_privs: false,
        }
    }
}

/// `NET_ADMIN`, `cap_net_admin` or `CAP_NET_ADMIN`; `ALL` is every capability.
fn parse_cap(name: &str) -> Result<Option<Capability>> {
    if name.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let canon = caps::to_canonical(name);
    Capability::from_str(&canon).map(Some).map_err(|_| {
        UserError(format!(
            "unknown capability '{name}' (as in --cap-add NET_ADMIN)"
        ))
    })
}

impl Profile {
    /// The profile a run's options ask for: unknown names and malformed options are errors
    /// before anything starts.
    pub fn from_options(
        privileged: bool,
        cap_add: &[String],
        cap_drop: &[String],
        security_opt: &[String],
    ) -> Result<Profile> {
        let mut p = Profile::default();
        if privileged {
            p.privileged = true;
            p.seccomp = false;
            p.caps = caps::all();
        }
        for d in cap_drop {
            match parse_cap(d)? {
                None => p.caps.clear(),
                Some(c) => {
                    p.caps.remove(&c);
                }
            }
        }
        for a in cap_add {
            match parse_cap(a)? {
                None => p.caps = caps::all(),
                Some(c) => {
                    p.caps.insert(c);
                }
            }
        }
        for o in security_opt {
            let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), "true"));
            match (k, v) {
                ("no-new-privileges", "true") => p.no_new_privs = true,
                ("no-new-privileges", "false") => p.no_new_privs = false,
                ("seccomp", "unconfined") => p.seccomp = false,
                ("seccomp", "default") => p.seccomp = true,
                _ => bail!(
                    "--security-opt '{o}': expected no-new-privileges[=true|false] or seccomp=unconfined|default"
                ),
            }
        }
        Ok(p)
    }

    /// The system calls the filter refuses with this profile's capabilities.
    pub fn denied_syscalls(&self) -> Vec<i64> {
        let mut v: Vec<i64> = denied()
            .into_iter()
            .filter(|(cap, _)| cap.is_none_or(|c| !self.caps.contains(&c)))
            .flat_map(|(_, calls)| calls)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The seccomp programs to install (none when unconfined): one that refuses with EPERM,
    /// and one that answers `clone3` with ENOSYS (its flags are in memory a filter cannot
    /// read, so the C library falls back to `clone`, whose flags it can).
    pub fn filters(&self) -> Result<Vec<BpfProgram>> {
        if !self.seccomp {
            return Ok(Vec::new());
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
            UserError(format!(
                "no seccomp profile for {} (--security-opt seccomp=unconfined runs without)",
                std::env::consts::ARCH
            ))
        })?;
        let bad = |e: seccompiler::BackendError| UserError(format!("the seccomp profile: {e}"));
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = self
            .denied_syscalls()
            .into_iter()
            .map(|s| (s, Vec::new()))
            .collect();
        if !self.caps.contains(&Capability::CAP_SYS_ADMIN) {
            for call in [libc::SYS_clone, libc::SYS_unshare] {
                let per_flag = NEW_NAMESPACES
                    .iter()
                    .map(|&f| {
                        SeccompCondition::new(
                            0,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(f),
                            f,
                        )
                        .and_then(|c| SeccompRule::new(vec![c]))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(bad)?;
                rules.insert(call, per_flag);
            }
        }
        let eperm = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(bad)?;
        let mut out: Vec<BpfProgram> = vec![eperm.try_into().map_err(bad)?];
        if !self.caps.contains(&Capability::CAP_SYS_ADMIN) {
            let enosys = SeccompFilter::new(
                [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .map_err(bad)?;
            out.push(enosys.try_into().map_err(bad)?);
        }
        Ok(out)
    }
}

impl Profile {
    /// [`Profile::filters`] as the kernel takes them.
    pub fn programs(&self) -> Result<Vec<Vec<libc::sock_filter>>> {
        Ok(self
            .filters()?
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|i| libc::sock_filter {
                        code: i.code,
                        jt: i.jt,
                        jf: i.jf,
                        k: i.k,
                    })
                    .collect()
            })
            .collect())
    }
}

/// The steps that confine the command's process, after every mount and before its exec.
pub(super) trait Confine {
    fn join_cgroups(&mut self) -> Result<()>;
    /// Drops every capability but `keep` from the bounding set, and clears the ambient set.
    fn bound(&mut self, keep: &HashSet<Capability>) -> Result<()>;
    fn no_new_privs(&mut self) -> Result<()>;
    /// Installs the profile's seccomp filters.
    fn seccomp(&mut self) -> Result<()>;
    /// The effective, permitted and inheritable sets become `keep`.
    fn set_caps(&mut self, keep: &HashSet<Capability>) -> Result<()>;
}

/// The order of the confinement, in the init before it starts the command (which inherits
/// all of it; the init lives under the same rules, as Docker's init does): limits joined
/// first (everything inside counts); the bounding set cut while the process still may;
/// without no-new-privileges the filter goes in while the process still holds CAP_SYS_ADMIN
/// (the kernel asks for one of the two), with it, last; the final capability sets between.
/// A `--user` switch comes after, in the command's process.
pub(super) fn confine(c: &mut impl Confine, p: &Profile) -> Result<()> {
    c.join_cgroups()?;
    if !p.privileged {
        c.bound(&p.caps)?;
    }
    if p.no_new_privs {
        c.no_new_privs()?;
    } else if p.seccomp {
        c.seccomp()?;
    }
    if !p.privileged {
        c.set_caps(&p.caps)?;
    }
    if p.no_new_privs && p.seccomp {
        c.seccomp()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recording(Vec<String>);

    impl Confine for Recording {
        fn join_cgroups(&mut self) -> Result<()> {
            self.0.push("cgroups".into());
            Ok(())
        }
        fn bound(&mut self, keep: &HashSet<Capability>) -> Result<()> {
            self.0.push(format!("bound {}", keep.len()));
            Ok(())
        }
        fn no_new_privs(&mut self) -> Result<()> {
            self.0.push("nnp".into());
            Ok(())
        }
        fn seccomp(&mut self) -> Result<()> {
            self.0.push("seccomp".into());
            Ok(())
        }
        fn set_caps(&mut self, keep: &HashSet<Capability>) -> Result<()> {
            self.0.push(format!("caps {}", keep.len()));
            Ok(())
        }
    }

    fn order(p: &Profile) -> Vec<String> {
        let mut r = Recording::default();
        confine(&mut r, p).unwrap();
        r.0
    }

    #[test]
    fn the_default_profile_in_its_order() {
        let p = Profile::default();
        assert_eq!(order(&p), ["cgroups", "bound 14", "seccomp", "caps 14"]);
        let nnp = Profile::from_options(false, &[], &[], &["no-new-privileges".into()]).unwrap();
        assert_eq!(
            order(&nnp),
            ["cgroups", "bound 14", "nnp", "caps 14", "seccomp"]
        );
        let all = Profile::from_options(true, &[], &[], &[]).unwrap();
        assert_eq!(order(&all), ["cgroups"]);
        let unconfined =
            Profile::from_options(false, &[], &[], &["seccomp=unconfined".into()]).unwrap();
        assert_eq!(order(&unconfined), ["cgroups", "bound 14", "caps 14"]);
    }

    #[test]
    fn options_change_the_profile() {
        let p = Profile::from_options(false, &["net_admin".into()], &["CAP_CHOWN".into()], &[])
            .unwrap();
        assert!(p.caps.contains(&Capability::CAP_NET_ADMIN));
        assert!(!p.caps.contains(&Capability::CAP_CHOWN));
        assert_eq!(p.caps.len(), 14);
        let none = Profile::from_options(false, &[], &["ALL".into()], &[]).unwrap();
        assert!(none.caps.is_empty());
        assert!(Profile::from_options(false, &["FLY".into()], &[], &[]).is_err());
        assert!(Profile::from_options(false, &[], &[], &["seccomp=maybe".into()]).is_err());
        let u = Profile::from_options(false, &[], &[], &["seccomp=unconfined".into()]).unwrap();
        assert!(u.filters().unwrap().is_empty());
    }

    #[test]
    fn the_filter_follows_the_capabilities() {
        let p = Profile::default();
        let d = p.denied_syscalls();
        for s in [
            libc::SYS_mount,
            libc::SYS_keyctl,
            libc::SYS_init_module,
            libc::SYS_clock_settime,
            libc::SYS_open_by_handle_at,
            libc::SYS_kexec_load,
        ] {
            assert!(d.contains(&s), "{s} allowed by default");
        }
        assert!(!d.contains(&libc::SYS_chroot));
        let admin = Profile::from_options(false, &["SYS_ADMIN".into()], &[], &[]).unwrap();
        let d = admin.denied_syscalls();
        assert!(!d.contains(&libc::SYS_mount) && d.contains(&libc::SYS_keyctl));
        // With CAP_SYS_ADMIN, new namespaces are the capability's to allow: no clone3 filter.
        assert_eq!(admin.filters().unwrap().len(), 1);
    }
}
