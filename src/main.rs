//! The `unionfuse` command line: parses, then calls the library.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use unionfuse::background;
use unionfuse::containers;
use unionfuse::daemon;
use unionfuse::error::UserError;
use unionfuse::request::{self, MountRequest};
use unionfuse::run;
use unionfuse::store::{Store, load, show};

#[derive(Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A userspace union filesystem: ordered read-only layers under one writable upper",
    after_help = "Examples:\n  unionfuse mount /layers/app:/layers/base /upper /mnt\n  unionfuse mount /layers/app:/layers/base /mnt        (read-only union)\n  unionfuse umount /mnt\n  unionfuse run --lower /layers/app:/layers/base -- /bin/sh\n\nImages and containers (the store: /var/lib/unionfuse, ~/.local/share/unionfuse rootless):\n  unionfuse load -i image.tar        (docker save, OCI archive or OCI layout)\n  unionfuse run --name c1 IMAGE sh -c 'echo hi > /hello.txt'\n  unionfuse start c1; unionfuse ps -a; unionfuse commit c1 NAME:TAG; unionfuse images --tree\n\nThe command line of fuse-overlayfs is understood too (for containers/storage's\nmount_program):\n  unionfuse [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W[,OPTION...] MOUNTPOINT\nwith volatile, noacl, uidmapping=ID:MAPPED:LEN[:...], gidmapping=..., squash_to_root,\nsquash_to_uid=N, squash_to_gid=N, ro, nosuid, nodev, noexec, allow_other.\n\nAs mount(8)'s helper (mount-helper/install links mount.unionfuse and\nmount.fuse.unionfuse to this binary):\n  mount -t fuse.unionfuse -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w none /mnt\n  none /mnt fuse.unionfuse lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nofail 0 0   (fstab)\nmount(8)'s own options (nofail, _netdev, noauto, x-*, comment=...) are ignored.\numount /mnt ends the daemon."
)]
struct Cli {
    /// The image store (default: /var/lib/unionfuse as root, ~/.local/share/unionfuse
    /// otherwise; or UNIONFUSE_ROOT).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Mount a union: LOWERS is a ':'-separated list, leftmost on top ('\:' escapes a ':').
    #[command(
        override_usage = "unionfuse mount [OPTIONS] LOWERS [UPPER] MOUNTPOINT",
        after_help = "Requests reach the daemon over io_uring where the kernel offers it (Linux 6.14+, once root\nhas run: echo Y > /sys/module/fuse/parameters/enable_uring), through /dev/fuse otherwise or\nwith UNIONFUSE_NO_IO_URING=1 in the environment.\n\nExamples:\n  unionfuse mount top:middle:bottom upper /mnt\n  unionfuse mount -f top:bottom /mnt      (read-only, in the foreground)\n  RUST_LOG=debug unionfuse mount -f l1:l2 upper /mnt"
    )]
    Mount {
        /// Stay in the foreground, logging to stderr (RUST_LOG sets the level).
        #[arg(short, long)]
        foreground: bool,
        /// Comma-separated options: ro, allow_other, noallow_other, threads=N, volatile
        /// (no fsync to the upper), whiteout=oci|kernel (format of whiteouts written).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// LOWERS [UPPER] MOUNTPOINT
        #[arg(num_args = 2..=3, required = true, value_name = "LOWERS [UPPER] MOUNTPOINT")]
        paths: Vec<OsString>,
    },
    /// Unmount a union and wait for its daemon to exit.
    #[command(after_help = "Example:\n  unionfuse umount /mnt")]
    Umount { mountpoint: PathBuf },
    /// Write the manual pages (unionfuse.1 and one per command) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Run a command in a container whose root filesystem is the union.
    ///
    /// As root or rootless, in new user (rootless), mount, pid, uts and ipc
    /// namespaces. Exits with the command's status
    /// (128+N if a signal N ended it; 125 if the run itself failed, 126/127 if the command
    /// could not be executed / was not found).
    #[command(
        after_help = "Inside: the union as /, a fresh /proc, a minimal /dev (null, zero, full, random,\nurandom, tty, pts, shm), /sys read-only, a tmpfs on /tmp. Rootless, the caller is root\ninside; with a range in /etc/subuid and /etc/subgid (and newuidmap/newgidmap) that range\nis mapped too, so files can belong to other users.\n\nExamples:\n  unionfuse run --lower app:base -- /bin/sh\n  unionfuse run --lower app:base --upper state --hostname box -- sh -c 'echo hi > /f'\n  unionfuse run --lower rootfs --ro-bind /etc/resolv.conf --bind $PWD:/src --chdir /src -- make",
        trailing_var_arg = true
    )]
    Run {
        /// The read-only layers, ':'-separated, leftmost on top. Without it, the first
        /// argument is an image of the store, run as a container.
        #[arg(long = "lower", value_name = "LOWERS")]
        lowers: Option<OsString>,
        /// An image run: the container's name (it stays, with its writable layer, until rm).
        #[arg(long)]
        name: Option<String>,
        /// An image run: remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// The writable layer; kept after the run. Without it, a temporary one is removed at exit.
        #[arg(long, value_name = "DIR")]
        upper: Option<PathBuf>,
        /// The hostname inside.
        #[arg(long)]
        hostname: Option<String>,
        /// Who the command runs as: NAME, UID, or either with :GROUP (default: root, or the
        /// image's User).
        #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
        user: Option<String>,
        /// Set an environment variable (the caller's environment is passed on otherwise;
        /// an image's own for a container).
        #[arg(long, short = 'e', visible_alias = "env", value_name = "K=V")]
        setenv: Vec<OsString>,
        /// Environment variables from a file of K=V lines (before -e).
        #[arg(long = "env-file", value_name = "FILE")]
        env_file: Vec<PathBuf>,
        /// The working directory inside (default /, or the image's).
        #[arg(long, short = 'w', visible_alias = "workdir", value_name = "DIR")]
        chdir: Option<PathBuf>,
        /// Bind a host path into the container (SRC alone binds it at the same path).
        #[arg(long, value_name = "SRC[:DST]")]
        bind: Vec<OsString>,
        /// Bind a host path read-only.
        #[arg(long = "ro-bind", value_name = "SRC[:DST]")]
        ro_bind: Vec<OsString>,
        /// host: the caller's network; none: only a loopback interface.
        #[arg(long, value_name = "host|none", default_value = "host")]
        net: String,
        /// The command and its arguments (after `--`); for a container, IMAGE [COMMAND...].
        #[arg(required = true, value_name = "COMMAND")]
        command: Vec<OsString>,
        /// Mount options, as for unionfuse mount -o (volatile, whiteout=oci, threads=N,
        /// override_stat, uidmapping=..., gidmapping=...).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Give the command a terminal of the container's own (relayed to this one), even
        /// when standard input is not a terminal. The default when standard input and
        /// output are the caller's terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Never give the command a terminal: it gets the caller's standard streams as
        /// they are.
        #[arg(long = "no-tty", conflicts_with = "tty")]
        no_tty: bool,
        /// Every capability, no seccomp filter, nothing of /proc and /sys masked.
        #[arg(long)]
        privileged: bool,
        /// Keep a capability beyond the default fourteen (NET_ADMIN, SYS_PTRACE…; ALL).
        #[arg(long = "cap-add", value_name = "CAP")]
        cap_add: Vec<String>,
        /// Drop a capability of the default fourteen (ALL: every one).
        #[arg(long = "cap-drop", value_name = "CAP")]
        cap_drop: Vec<String>,
        /// no-new-privileges (set-id programs gain nothing), seccomp=unconfined (no filter).
        #[arg(long = "security-opt", value_name = "OPT")]
        security_opt: Vec<String>,
        /// Memory limit (64m, 1g…): past it the kernel's OOM killer ends the command.
        #[arg(long, short = 'm', value_name = "SIZE", allow_hyphen_values = true)]
        memory: Option<String>,
        /// Memory plus swap (-1: unlimited swap; default: twice --memory).
        #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true)]
        memory_swap: Option<String>,
        /// CPU time, in CPUs (0.5: half of one).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        cpus: Option<String>,
        /// Relative CPU weight (1024 is the default of everything else).
        #[arg(long = "cpu-shares", short = 'c', value_name = "N")]
        cpu_shares: Option<u64>,
        /// Most processes and threads at once (-1: unlimited).
        #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        /// Standard input reaches the command (always, attached; with -d, through attach).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// An image run: start the container in the background and print its id.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Run a command (default: a shell) as root of a user namespace with the same id map as
    /// a rootless run: to re-own a tree for a run, or remove an upper whose files belong to
    /// subordinate ids.
    #[command(trailing_var_arg = true)]
    Unshare {
        #[arg(allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Pull an image from a registry (alpine, library/alpine:3.20, localhost:5000/app:1,
    /// registry.example/team/app@sha256:...). Layers already in the store are not fetched.
    Pull {
        reference: String,
        /// os/arch[/variant] of a multi-platform image (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// false: plain HTTP and any certificate (plain HTTP is otherwise for localhost only).
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Push an image of the store to a registry (REF: where; default: the image's name).
    Push {
        image: String,
        reference: Option<String>,
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Keep credentials for a registry (checked with it first), where podman keeps them.
    Login {
        registry: String,
        #[arg(short, long)]
        username: String,
        /// Read the password from standard input (one line).
        #[arg(long = "password-stdin")]
        password_stdin: bool,
        #[arg(long = "tls-verify", value_name = "BOOL")]
        tls_verify: Option<bool>,
    },
    /// Forget the credentials kept for a registry.
    Logout { registry: String },
    /// Load images: a docker save tarball, an OCI image layout directory or an OCI archive.
    Load {
        /// The archive or directory.
        #[arg(short, long, value_name = "FILE|DIR")]
        input: PathBuf,
    },
    /// Make a one-layer image from a root filesystem tarball.
    Import { tarball: PathBuf, name: String },
    /// List the images of the store (--tree: how they share layers).
    Images {
        #[arg(long)]
        tree: bool,
    },
    /// The history of an image.
    History { image: String },
    /// Give an image another name.
    Tag { image: String, name: String },
    /// An image's or a container's record, as JSON.
    Inspect { what: String },
    /// Remove images (a name; the image once it has none). Refused while a container uses it.
    Rmi {
        /// Remove an image given by id with every name it has.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove the layers and blobs no image references.
    Prune,
    /// Make a container of an image, without running it.
    #[command(trailing_var_arg = true)]
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, short = 'e', value_name = "K=V")]
        env: Vec<OsString>,
        #[arg(long, short = 'w', value_name = "DIR")]
        workdir: Option<PathBuf>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
        user: Option<String>,
        image: String,
        #[arg(allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Start a container, attached: its writable layer is the one of its earlier runs.
    Start {
        /// Attached: the command runs in this terminal, and start ends with it. Without
        /// -a or -i the container starts in the background.
        #[arg(short, long)]
        attach: bool,
        /// Interactive and attached (stdin passed on).
        #[arg(short, long)]
        interactive: bool,
        container: String,
    },
    /// Stop a running container.
    Stop {
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        container: String,
    },
    /// Send a signal to a running container (KILL ends it at once; others go to its command).
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        container: String,
    },
    /// What a container wrote, in every run of it (foreground or background): its standard
    /// output to standard output and its standard error to standard error (-f: and what
    /// it writes next, until it ends).
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Follow a background container's output, and pass it what you type when it was
    /// started with -i (Ctrl-P Ctrl-Q detaches on a terminal).
    Attach { container: String },
    /// Run another command in a running container (its namespaces, root, user and profile).
    #[command(trailing_var_arg = true)]
    Exec {
        /// Accepted for docker's -it: standard input always reaches the command.
        #[arg(short, long)]
        interactive: bool,
        /// A terminal of the container's own (the default when stdin and stdout are a terminal).
        #[arg(short, long)]
        tty: bool,
        #[arg(long, short = 'e', value_name = "K=V")]
        env: Vec<OsString>,
        #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
        user: Option<String>,
        #[arg(long, short = 'w', value_name = "DIR")]
        workdir: Option<PathBuf>,
        container: String,
        #[arg(required = true, allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// The processes of a running container.
    Top { container: String },
    /// List containers (-a: also those not running).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Remove containers and their writable layers (-f: running ones too).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// A container's changes: A(dded), C(hanged), D(eleted) paths.
    Diff { container: String },
    /// Make a container's changes a new layer of a new image.
    Commit { container: String, name: String },
    /// Write an image to an archive that podman, skopeo and unionfuse load.
    Save {
        image: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// oci-archive (default) or docker-archive.
        #[arg(long, default_value = "oci-archive")]
        format: String,
    },
    /// Check that every record's blobs and layers are there, with their digests.
    #[command(name = "store-check")]
    StoreCheck,
}

#[allow(clippy::too_many_arguments)]
fn run_request(
    lowers: OsString,
    upper: Option<PathBuf>,
    hostname: Option<String>,
    user: Option<String>,
    setenv: Vec<OsString>,
    chdir: Option<PathBuf>,
    bind: Vec<OsString>,
    ro_bind: Vec<OsString>,
    net: String,
    command: Vec<OsString>,
) -> Result<run::RunRequest, UserError> {
    let net = match net.as_str() {
        "host" => run::Net::Host,
        "none" => run::Net::None,
        n => return Err(UserError(format!("--net '{n}': expected host or none"))),
    };
    let mut binds = Vec::new();
    for b in &bind {
        binds.push(run::parse_bind(b, false)?);
    }
    for b in &ro_bind {
        binds.push(run::parse_bind(b, true)?);
    }
    Ok(run::RunRequest {
        lower_spec: lowers,
        upper,
        hostname,
        user,
        setenv: run::parse_envs(&setenv)?,
        chdir,
        binds,
        net,
        command,
        ..Default::default()
    })
}

/// `run IMAGE [COMMAND...]`: a container made and started (and removed after with --rm).
fn run_image(
    root: Option<PathBuf>,
    name: Option<String>,
    (rm, detach, interactive): (bool, bool, bool),
    req: Result<run::RunRequest, UserError>,
) -> Result<i32, UserError> {
    let mut req = req?;
    if req.upper.is_some() {
        return Err(UserError(
            "--upper is for --lower runs: a container has its own writable layer".into(),
        ));
    }
    let store = Store::open(root)?;
    let mut words = std::mem::take(&mut req.command).into_iter();
    let image = words
        .next()
        .ok_or_else(|| UserError("no image given".into()))?;
    let a = containers::ContainerArgs {
        name,
        image: image.to_string_lossy().into_owned(),
        command: words.collect(),
        env: Vec::new(),
        workdir: None,
        hostname: None,
        user: req.user.clone(),
        host: req.host.clone(),
    };
    let c = containers::create(&store, &a)?;
    if detach {
        // No terminal of the caller's: a terminal inside only with -t.
        let req = run::RunRequest {
            tty: Some(req.tty == Some(true)),
            ..req
        };
        background::start_detached(&store, &c, req, interactive, rm)?;
        println!("{}", c.id);
        return Ok(0);
    }
    if rm {
        return containers::run_once(&store, &c, req);
    }
    containers::start(&store, &c, req)
}

/// `-o` options, through the parser every front end shares. The layers are the command's
/// arguments here, not options.
fn apply_options(options: &[String]) -> Result<MountRequest, UserError> {
    let mut o = request::Options::default();
    for list in options {
        request::apply_options(&mut o, std::ffi::OsStr::new(list), false)?;
    }
    if o.lower_spec.is_some() || o.req.union.upper.is_some() {
        return Err(UserError(
            "lowerdir= and upperdir= are the LOWERS and UPPER arguments of unionfuse mount".into(),
        ));
    }
    let mut req = o.req;
    if let Some(w) = o.workdir {
        req.union.workdir = Some(request::check_dir("workdir", &w, None)?);
    }
    Ok(req)
}

/// The image and container commands.
fn store_command(root: Option<PathBuf>, cmd: Cmd) -> Result<(), UserError> {
    let store = Store::open(root)?;
    let out = store_output(&store, cmd).map_err(|e| store.when_full(e))?;
    print!("{out}");
    Ok(())
}

fn store_output(store: &Store, cmd: Cmd) -> Result<String, UserError> {
    let out = match cmd {
        Cmd::Load { input } => containers::load_images(store, &input)?,
        Cmd::Login {
            registry,
            username,
            password_stdin,
            tls_verify,
        } => {
            if !password_stdin {
                return Err(UserError(
                    "give the password on standard input: unionfuse login --password-stdin -u USER REGISTRY".into(),
                ));
            }
            let mut pw = String::new();
            std::io::stdin()
                .read_line(&mut pw)
                .map_err(|e| UserError(format!("the password: {e}")))?;
            let pw = pw.trim_end_matches(['\n', '\r']);
            let o = unionfuse::store::registry::Options {
                tls_verify,
                platform: None,
            };
            let f = unionfuse::store::registry::login(&registry, &username, pw, &o)?;
            format!("Login Succeeded (kept in {})\n", f.display())
        }
        Cmd::Logout { registry } => {
            if unionfuse::store::auth::forget(&registry)? {
                format!("Removed login credentials for {registry}\n")
            } else {
                return Err(UserError(format!("not logged in to {registry}")));
            }
        }
        Cmd::Pull {
            reference,
            platform,
            tls_verify,
        } => {
            let o = unionfuse::store::registry::Options {
                tls_verify,
                platform,
            };
            let img =
                unionfuse::store::registry::pull(store, &reference, &o, &load::Report::new())?;
            format!("{}\n", img.id)
        }
        Cmd::Push {
            image,
            reference,
            tls_verify,
        } => {
            let o = unionfuse::store::registry::Options {
                tls_verify,
                platform: None,
            };
            let to = reference.unwrap_or_else(|| image.clone());
            let d = unionfuse::store::registry::push(store, &image, &to, &o, &load::Report::new())?;
            format!("{to}@{d}\n")
        }
        Cmd::Import { tarball, name } => {
            let img = load::import(store, &tarball, &name, &load::Report::new())?;
            format!("{}\n", img.id)
        }
        Cmd::Images { tree } => {
            if tree {
                show::tree(store)?
            } else {
                show::images(store)?
            }
        }
        Cmd::History { image } => show::history(store, &store.find_image(&image)?)?,
        Cmd::Tag { image, name } => {
            let img = store.find_image(&image)?;
            let _l = store.lock()?;
            store.set_name(&img.id, &name)?;
            String::new()
        }
        Cmd::Inspect { what } => containers::inspect(store, &what)? + "\n",
        Cmd::Rmi { force, images } => {
            let mut out = String::new();
            for i in images {
                out.push_str(&containers::remove_image(store, &i, force)?);
                out.push('\n');
            }
            out
        }
        Cmd::Prune => format!("freed {}\n", unionfuse::store::human(store.prune()?)),
        Cmd::Create {
            name,
            env,
            workdir,
            hostname,
            user,
            image,
            command,
        } => {
            let a = containers::ContainerArgs {
                name,
                image,
                command,
                env: run::parse_envs(&env)?,
                workdir,
                hostname,
                user,
                host: run::HostOptions::default(),
            };
            format!("{}\n", containers::create(store, &a)?.id)
        }
        Cmd::Stop { time, container } => {
            let c = store.find_container(&container)?;
            background::stop(store, &c, std::time::Duration::from_secs(time))?;
            format!("{}\n", c.name)
        }
        Cmd::Kill { signal, container } => {
            let c = store.find_container(&container)?;
            background::kill(store, &c, background::parse_signal(&signal)?)?;
            format!("{}\n", c.name)
        }
        Cmd::Logs { follow, container } => {
            let c = store.find_container(&container)?;
            background::logs(
                store,
                &c,
                follow,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            String::new()
        }
        Cmd::Top { container } => background::top(store, &store.find_container(&container)?)?,
        Cmd::Ps { all } => show::ps(store, all)?,
        Cmd::Rm {
            force,
            containers: list,
        } => {
            for c in list {
                containers::remove(store, &store.find_container(&c)?, force)?;
            }
            String::new()
        }
        Cmd::Diff { container } => containers::diff(store, &store.find_container(&container)?)?,
        Cmd::Commit { container, name } => {
            containers::commit_container(store, &store.find_container(&container)?, &name)?
        }
        Cmd::Save {
            image,
            output,
            format,
        } => {
            let img = store.find_image(&image)?;
            let format = unionfuse::store::save::Format::parse(&format)?;
            // The name asked for, if it is one of the image's; else its first.
            let name = unionfuse::store::normalize_name(&image)
                .ok()
                .filter(|n| img.names.contains(n))
                .or_else(|| img.names.first().cloned());
            unionfuse::store::save::save(store, &img, name.as_deref(), format, &output)?;
            String::new()
        }
        Cmd::StoreCheck => {
            let bad = store.check()?;
            if !bad.is_empty() {
                return Err(UserError(format!(
                    "the store has {} problem(s): {}",
                    bad.len(),
                    bad.join("; ")
                )));
            }
            "the store is consistent\n".into()
        }
        Cmd::Mount { .. }
        | Cmd::Umount { .. }
        | Cmd::Man { .. }
        | Cmd::Run { .. }
        | Cmd::Start { .. }
        | Cmd::Attach { .. }
        | Cmd::Exec { .. }
        | Cmd::Unshare { .. } => {
            unreachable!("not a store command")
        }
    };
    Ok(out)
}

fn run(cli: Cli) -> Result<(), UserError> {
    match cli.cmd {
        Cmd::Mount {
            foreground,
            options,
            paths,
        } => {
            let mut req = apply_options(&options)?;
            req.foreground = foreground;
            let lower_spec = paths[0].clone();
            req.union.lowers = request::split_layers(&lower_spec)?;
            if paths.len() == 3 {
                req.union.upper = Some(PathBuf::from(&paths[1]));
            }
            req.mountpoint = PathBuf::from(paths.last().unwrap());
            let checked = request::validate(&req, Some(&lower_spec))?;
            daemon::mount(checked)
        }
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint, Duration::from_secs(30)),
        Cmd::Run { .. } => unreachable!("handled in main"),
        Cmd::Man { dir } => {
            write_man_pages(&dir).map_err(|e| UserError(format!("{}: {e}", dir.display())))
        }
        cmd => store_command(cli.root, cmd),
    }
}

/// unionfuse.1 for the whole program, unionfuse-COMMAND.1 for each command, from the same
/// definitions as `--help`.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let render = |c: clap::Command, file: String| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        std::fs::write(dir.join(file), out)
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("unionfuse-{}", sub.get_name());
        // clap names are 'static; this runs once per page.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        render(sub.clone().name(leaked), format!("{name}.1"))?;
    }
    render(cmd.clone(), "unionfuse.1".into())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(r) = unionfuse::compat::dispatch(&argv) {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unionfuse: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            // A run that could not start exits 125, as docker's does.
            let is_run = argv.get(1).is_some_and(|a| a == "run" || a == "start");
            if is_run && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::from(run::RUNNER_FAILED);
            }
            e.exit();
        }
    };
    if let Cmd::Unshare { command } = &cli.cmd {
        return match unionfuse::userns::unshare_command(command) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("unionfuse unshare: {e}");
                ExitCode::from(run::RUNNER_FAILED)
            }
        };
    }
    let root = cli.root.clone();
    let code_of = |what: &str, r: Result<i32, UserError>| match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("unionfuse {what}: {e}");
            ExitCode::from(run::RUNNER_FAILED)
        }
    };
    if let Cmd::Start {
        container,
        attach,
        interactive,
    } = &cli.cmd
    {
        let r = Store::open(root.clone()).and_then(|s| {
            let c = s.find_container(container)?;
            if *attach || *interactive {
                return containers::start(&s, &c, containers::base_request());
            }
            let req = run::RunRequest {
                tty: Some(false),
                ..containers::base_request()
            };
            background::start_detached(&s, &c, req, false, false)?;
            println!("{}", c.name);
            Ok(0)
        });
        return code_of("start", r);
    }
    if let Cmd::Attach { container } = &cli.cmd {
        let r = Store::open(root.clone())
            .and_then(|s| background::attach(&s, &s.find_container(container)?));
        return code_of("attach", r);
    }
    if let Cmd::Exec {
        interactive: _,
        tty,
        env,
        user,
        workdir,
        container,
        command,
    } = &cli.cmd
    {
        let r = Store::open(root.clone()).and_then(|s| {
            let c = s.find_container(container)?;
            let a = background::ExecArgs {
                command: command.clone(),
                env: run::parse_envs(env)?,
                user: user.clone(),
                workdir: workdir.clone(),
                tty: tty.then_some(true),
            };
            background::exec(&s, &c, a)
        });
        return code_of("exec", r);
    }
    if let Cmd::Run {
        lowers,
        name,
        rm,
        upper,
        hostname,
        user,
        setenv,
        env_file,
        chdir,
        bind,
        ro_bind,
        net,
        command,
        options,
        tty,
        no_tty,
        interactive,
        detach,
        privileged,
        cap_add,
        cap_drop,
        security_opt,
        memory,
        memory_swap,
        cpus,
        cpu_shares,
        pids_limit,
    } = cli.cmd
    {
        let host = run::HostOptions {
            privileged,
            cap_add,
            cap_drop,
            security_opt,
            memory,
            memory_swap,
            cpus,
            cpu_shares,
            pids_limit,
        };
        if let Err(e) = host.check() {
            eprintln!("unionfuse run: {e}");
            return ExitCode::from(run::RUNNER_FAILED);
        }
        if detach && lowers.is_some() {
            eprintln!(
                "unionfuse run: -d starts a container of an image (run -d IMAGE): a --lower run lives as long as its runner"
            );
            return ExitCode::from(run::RUNNER_FAILED);
        }
        let tty = match (tty, no_tty) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        // The files' variables first: -e overrides them.
        let mut all = Vec::new();
        for f in &env_file {
            match run::read_env_file(f) {
                Ok(vars) => all.extend(vars.into_iter().map(|(k, v)| {
                    let mut kv = k;
                    kv.push("=");
                    kv.push(v);
                    kv
                })),
                Err(e) => {
                    eprintln!("unionfuse run: {e}");
                    return ExitCode::from(run::RUNNER_FAILED);
                }
            }
        }
        all.extend(setenv);
        let setenv = all;
        let r = match lowers {
            Some(lowers) => run_request(
                lowers, upper, hostname, user, setenv, chdir, bind, ro_bind, net, command,
            )
            .map(|r| run::RunRequest {
                mount_options: options.clone(),
                tty,
                host: host.clone(),
                ..r
            })
            .and_then(run::run),
            None => run_image(
                root,
                name,
                (rm, detach, interactive),
                run_request(
                    OsString::new(),
                    upper,
                    hostname,
                    user,
                    setenv,
                    chdir,
                    bind,
                    ro_bind,
                    net,
                    command,
                )
                .map(|r| run::RunRequest {
                    mount_options: options.clone(),
                    tty,
                    host,
                    ..r
                }),
            ),
        };
        return match r {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("unionfuse run: {e}");
                ExitCode::from(run::RUNNER_FAILED)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfuse: {e}");
            ExitCode::FAILURE
        }
    }
}
