//! Reading the files a config names, and the config itself, so that
//! nothing the file system does can stop or fool the balancer.
//!
//! A file is opened without blocking (a FIFO would otherwise wait for a
//! writer), checked on the open descriptor (not on the path, which may
//! change in between): it must be a regular file, no larger than its cap,
//! owned by root or by the user ucp-lb runs as, writable by nobody else,
//! in a directory nobody else may write (unless sticky), and, for a secret,
//! readable by nobody else. Then at most the cap is read. Each refusal says
//! what to run to fix it. A leaf: callers wrap the message in their own
//! error, with the key that named the file.
//!
//! The files ucp-lb writes (the access log) are opened the same way
//! ([`open_append`]): without blocking, and only a regular file is kept (a
//! FIFO, device, socket, directory or a kernel interface such as /proc is
//! refused with its name and never written to). [`check_append`] is the
//! same test without creating anything, for `check` and start.

use std::fs::{Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// lb.toml, and a CA file, are read up to this size.
pub const CONFIG_MAX: u64 = 1 << 20;
/// A token file is read up to this size.
pub const TOKEN_MAX: u64 = 4 << 10;
/// How long reading the config and the files it names may take, off the
/// runtime's threads, before a reload gives up and the running config stays.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of a file is read and who may see it.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub max: u64,
    /// Only its owner may read it (the admin token).
    pub secret: bool,
}

pub const CONFIG: Kind = Kind { max: CONFIG_MAX, secret: false };
pub const TOKEN: Kind = Kind { max: TOKEN_MAX, secret: true };
pub const CA: Kind = Kind { max: CONFIG_MAX, secret: false };
/// A private key (the cluster bundle's key.pem): as lb.toml's bound, owner only.
pub const KEY: Kind = Kind { max: CONFIG_MAX, secret: true };

/// The text of `path`, or why it may not be used; `what` names the file in
/// a message about an error reading it ("the config file", "CA file x").
pub fn read(path: &Path, what: &str, kind: Kind) -> Result<String, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {what}: {e}"))?;
    trusted(path, &meta, kind)?;
    let mut text = String::new();
    let read = (&file).take(kind.max + 1).read_to_string(&mut text);
    match read {
        Ok(n) if n as u64 > kind.max => Err(too_big(path, kind)),
        Ok(_) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(format!("{} is not UTF-8 text", path.display())),
        Err(e) => Err(format!("cannot read {what}: {e}")),
    }
}

fn too_big(path: &Path, kind: Kind) -> String {
    format!("{} is larger than {} KiB: refused (nothing is read past that)", path.display(), kind.max >> 10)
}

/// What a file of this type is, for a message.
fn type_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Why the open file `meta` (at `path`) may not be used, if it may not.
fn trusted(path: &Path, meta: &Metadata, kind: Kind) -> Result<(), String> {
    let shown = path.display();
    if !meta.file_type().is_file() {
        return Err(format!("{shown} is {}, not a regular file: refused", type_name(meta)));
    }
    if meta.len() > kind.max {
        return Err(too_big(path, kind));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(format!(
            "{shown} is writable by every user (mode {mode:04o}): refused; remove that bit with `chmod o-w {shown}`"
        ));
    }
    if mode & 0o020 != 0 {
        return Err(format!(
            "{shown} is writable by its group (mode {mode:04o}): refused; remove that bit with `chmod g-w {shown}`"
        ));
    }
    if kind.secret && mode & 0o044 != 0 {
        return Err(format!(
            "{shown} is readable by others than its owner (mode {mode:04o}): refused for a secret; `chmod 600 {shown}`"
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{shown} is owned by uid {}, neither root nor the user ucp-lb runs as (uid {me}): refused; `chown {me} {shown}` or `chown root {shown}`",
            meta.uid()
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::metadata(dir) {
        let dmode = d.mode() & 0o7777;
        // Sticky (as /tmp): others may add files, not replace this one.
        if dmode & 0o002 != 0 && dmode & 0o1000 == 0 {
            return Err(format!(
                "{shown} is in {}, which every user may write (mode {dmode:04o}): anyone could replace it; refused (`chmod o-w {}`)",
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Why a file cannot be appended to: a short code (a metric's `reason`
/// label) and what to do, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The directory the file would be made in does not exist.
    MissingDirectory,
    /// A directory, FIFO, device or socket, or a file of /proc or /sys.
    NotRegularFile,
    PermissionDenied,
    ReadOnly,
    NoSpace,
    /// Any other error of the open or the write.
    IoError,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::MissingDirectory,
        Reason::NotRegularFile,
        Reason::PermissionDenied,
        Reason::ReadOnly,
        Reason::NoSpace,
        Reason::IoError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingDirectory => "missing_directory",
            Reason::NotRegularFile => "not_regular_file",
            Reason::PermissionDenied => "permission_denied",
            Reason::ReadOnly => "read_only",
            Reason::NoSpace => "no_space",
            Reason::IoError => "io_error",
        }
    }
}

/// A file that cannot be written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable {
    pub reason: Reason,
    /// The path and the reason, with what to do about it.
    pub message: String,
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Kernel interfaces that look like regular files: writing a log line
/// there fails (EIO) or, worse, means something to the kernel.
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "/proc (procfs)"),
    (0x6265_6572, "/sys (sysfs)"),
    (0x0027_e0eb, "a cgroup file system"),
    (0x6367_7270, "a cgroup2 file system"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "the BPF file system"),
    (0xde5e_81e4, "efivarfs"),
];

/// The flags every open of a file ucp-lb writes has: append, and never
/// wait (a FIFO without a reader fails at once instead of blocking).
fn append_flags() -> i32 {
    (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32
}

/// Opens `path` to append log lines, making it (mode 0640, less the umask)
/// when it does not exist; without blocking, and only if it is a regular
/// file on a real file system. A symbolic link is followed (a log may be
/// linked into place), and the file it leads to is what is checked.
pub fn open_append(path: &Path) -> Result<std::fs::File, Unwritable> {
    // The type first, from the path: a FIFO or a device is not even opened
    // (opening some devices does something).
    match std::fs::metadata(path) {
        Ok(meta) => {
            not_regular(path, &meta)?;
            pseudo_path(path)?;
        }
        // A new file in /proc or /sys: the directory says what it is on
        // (the open would fail with a misleading "does not exist").
        Err(_) => pseudo_dir(path)?,
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(append_flags())
        .open(path)
        .map_err(|e| open_error(path, &e))?;
    // Then on the descriptor: what was opened, whatever the path names now.
    let meta = file.metadata().map_err(|e| open_error(path, &e))?;
    not_regular(path, &meta)?;
    pseudo(path, &file)?;
    Ok(file)
}

/// Whether [`open_append`] would succeed, without making the file: an
/// existing regular file is opened to append (nothing is written); a
/// missing one needs a directory this process may write.
pub fn check_append(path: &Path) -> Result<(), Unwritable> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            not_regular(path, &meta)?;
            pseudo_path(path)?;
            let file = OpenOptions::new()
                .append(true)
                .custom_flags(append_flags())
                .open(path)
                .map_err(|e| open_error(path, &e))?;
            not_regular(path, &file.metadata().map_err(|e| open_error(path, &e))?)?;
            pseudo(path, &file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(d) if d.is_dir() => {}
                _ => return Err(open_error(path, &e)),
            }
            pseudo_dir(path)?;
            let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
            rustix::fs::accessat(rustix::fs::CWD, dir, access, rustix::fs::AtFlags::EACCESS)
                .map_err(|errno| open_error(path, &std::io::Error::from(errno)))
        }
        Err(e) => Err(open_error(path, &e)),
    }
}

fn not_regular(path: &Path, meta: &Metadata) -> Result<(), Unwritable> {
    if meta.file_type().is_file() {
        return Ok(());
    }
    let shown = path.display();
    let what = type_name(meta);
    let hint = if meta.is_dir() {
        "name a file in it"
    } else if meta.file_type().is_fifo() {
        "a reader that stops would stall the log; to pipe the log to a program, use \"stdout\""
    } else {
        "name a regular file"
    };
    Err(Unwritable {
        reason: Reason::NotRegularFile,
        message: format!("{shown} is {what}, not a regular file: refused ({hint})"),
    })
}

/// A file of /proc, /sys and the like (by its path, before it is opened).
fn pseudo_path(path: &Path) -> Result<(), Unwritable> {
    match rustix::fs::statfs(path) {
        Ok(fs) => pseudo_kind(path, &fs),
        Err(_) => Ok(()),
    }
}

/// A file not made yet in a directory of /proc, /sys and the like.
fn pseudo_dir(path: &Path) -> Result<(), Unwritable> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => match rustix::fs::statfs(dir) {
            Ok(fs) => pseudo_kind(path, &fs),
            Err(_) => Ok(()),
        },
        None => Ok(()),
    }
}

/// The same, on the open file.
fn pseudo(path: &Path, file: &std::fs::File) -> Result<(), Unwritable> {
    match rustix::fs::fstatfs(file) {
        Ok(fs) => pseudo_kind(path, &fs),
        Err(_) => Ok(()),
    }
}

fn pseudo_kind(path: &Path, fs: &rustix::fs::StatFs) -> Result<(), Unwritable> {
    // `f_type`'s width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as i64;
    match PSEUDO_FS.iter().find(|(magic, _)| kind == *magic) {
        Some((_, name)) => Err(Unwritable {
            reason: Reason::NotRegularFile,
            message: format!("{} is on {name}, a kernel interface, not a file to log to: refused", path.display()),
        }),
        None => Ok(()),
    }
}

/// `path` (or, when it does not exist, its directory) is on a read-only
/// mount.
fn read_only(path: &Path, dir: &Path) -> bool {
    let on = |p: &Path| rustix::fs::statvfs(p).ok().map(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    on(path).or_else(|| on(dir)).unwrap_or(false)
}

/// The reason and words for an error opening or writing `path`.
pub fn open_error(path: &Path, e: &std::io::Error) -> Unwritable {
    let shown = path.display();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let me = rustix::process::geteuid().as_raw();
    let (reason, message) = match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::NOENT) => (
            Reason::MissingDirectory,
            format!(
                "{shown}: the directory {} does not exist: create it (writable by uid {me}) or name another",
                dir.display()
            ),
        ),
        Some(rustix::io::Errno::NOTDIR) => {
            (Reason::MissingDirectory, format!("{shown}: a part of {} is not a directory", dir.display()))
        }
        Some(rustix::io::Errno::ISDIR) => {
            (Reason::NotRegularFile, format!("{shown} is a directory, not a regular file: refused (name a file in it)"))
        }
        Some(rustix::io::Errno::NXIO) => {
            (Reason::NotRegularFile, format!("{shown} is a FIFO or a device, not a regular file: refused"))
        }
        // A read-only mount is what matters most, whoever may write: the
        // kernel says "permission denied" first when both hold.
        Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM | rustix::io::Errno::ROFS) if read_only(path, dir) => {
            (
                Reason::ReadOnly,
                format!(
                    "{shown}: read-only file system (in a container, mount a writable volume there or log to \"stdout\")"
                ),
            )
        }
        Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => (
            Reason::PermissionDenied,
            format!(
                "{shown}: permission denied to uid {me} (the user ucp-lb runs as): make it (or {}) writable by that user",
                dir.display()
            ),
        ),
        Some(rustix::io::Errno::ROFS) => (
            Reason::ReadOnly,
            format!(
                "{shown}: read-only file system (in a container, mount a writable volume there or log to \"stdout\")"
            ),
        ),
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => {
            (Reason::NoSpace, format!("{shown}: no space left on the device (or over quota)"))
        }
        _ => (Reason::IoError, format!("{shown}: {e}")),
    };
    Unwritable { reason, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
        let e = read(&fifo, "f", CONFIG).unwrap_err();
        assert!(e.contains("is a FIFO (named pipe), not a regular file"), "{e}");
        let e = read(Path::new("/dev/zero"), "f", CONFIG).unwrap_err();
        assert!(e.contains("is a character device"), "{e}");
        let e = read(dir.path(), "f", CONFIG).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn a_log_is_made_0640_and_only_a_regular_file_is_opened_to_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        assert_eq!(check_append(&log), Ok(()), "a missing file in a writable directory");
        assert!(!log.exists(), "check makes nothing");
        drop(open_append(&log).unwrap());
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & !0o640, 0, "at most 0640 (less the umask): {mode:o}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
        for (path, reason) in [
            (fifo.as_path(), Reason::NotRegularFile),
            (Path::new("/dev/null"), Reason::NotRegularFile),
            (dir.path(), Reason::NotRegularFile),
            (Path::new("/proc/version"), Reason::NotRegularFile),
            // New files there too (it is the directory that says so).
            (Path::new("/proc/ucp-lb-access.log"), Reason::NotRegularFile),
            (Path::new("/sys/ucp-lb-access.log"), Reason::NotRegularFile),
            (&dir.path().join("no/such.log"), Reason::MissingDirectory),
        ] {
            assert_eq!(open_append(path).map(drop).map_err(|e| e.reason), Err(reason), "{}", path.display());
            assert_eq!(check_append(path).map_err(|e| e.reason), Err(reason), "{}", path.display());
        }
    }

    #[test]
    fn size_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let big = file(dir.path(), "big", &"#".repeat((2 << 20) as usize), 0o644);
        assert!(read(&big, "f", CONFIG).unwrap_err().contains("larger than 1024 KiB"));
        let token = file(dir.path(), "token", &"t".repeat(5000), 0o600);
        assert!(read(&token, "f", TOKEN).unwrap_err().contains("larger than 4 KiB"));
        let ok = file(dir.path(), "ok", "x = 1\n", 0o644);
        assert_eq!(read(&ok, "f", CONFIG).unwrap(), "x = 1\n");
    }

    #[test]
    fn who_may_write_or_read_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let g = file(dir.path(), "g", "x", 0o664);
        assert!(read(&g, "f", CONFIG).unwrap_err().contains("writable by its group"));
        let o = file(dir.path(), "o", "x", 0o646);
        assert!(read(&o, "f", CONFIG).unwrap_err().contains("writable by every user"));
        let readable = file(dir.path(), "t", "secret", 0o640);
        assert!(read(&readable, "f", TOKEN).unwrap_err().contains("readable by others than its owner"));
        assert!(read(&readable, "f", CONFIG).is_ok(), "a config may be readable");
        let open_dir = dir.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let inside = file(&open_dir, "lb.toml", "x", 0o644);
        assert!(read(&inside, "f", CONFIG).unwrap_err().contains("which every user may write"));
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read(&inside, "f", CONFIG).is_ok(), "a sticky directory is fine");
    }
}
