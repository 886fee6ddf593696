//! The control socket: where a running process hands its listening sockets,
//! its state and its open connections to the process that takes over from
//! it (`ucp-lb --upgrade`).
//!
//! A Unix stream socket, never on the network. A message is a 4-byte
//! length and that much JSON (at most [`MAX_MESSAGE`]), sent by one
//! `sendmsg` with its descriptors (`SCM_RIGHTS`) attached. The kernel hands
//! descriptors to the read that takes the first bytes of the send they came
//! with and never lets one read run past them, and each read here asks for
//! exactly the rest of one message's header or body, so a descriptor is
//! never read with the wrong message. rustix's safe API does `sendmsg` and
//! `recvmsg` on tokio's sockets: no `unsafe` here.
//!
//! Trust: the socket file is made with mode 0600 (bound under a temporary
//! name, its mode set, then renamed into place before anyone can connect),
//! so only its owner (and root) can connect; the serving side checks the
//! peer's user again (`SO_PEERCRED`); the connecting side refuses a socket
//! file that another user owns or that group or others may write, and then
//! checks the credentials of the process at the other end of the
//! connection it made (`SO_PEERCRED` again: this user or root), so a file
//! swapped between the check and the connect gains nothing.
//!
//! One message is sent at a time on a connection (a lock around `send`),
//! so two tasks of one side may both send.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// The largest message: a moved connection or one server's state is a few
/// hundred bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Descriptors one message carries at most (a connection's two sockets).
pub const MAX_FDS: usize = 2;

/// What is at a control socket's path.
#[derive(Debug, PartialEq, Eq)]
pub enum Occupant {
    Nothing,
    /// A socket file nobody listens on (a process that was killed).
    Stale,
    /// A running process listens there.
    Live,
}

/// Looks at `path`: nothing, a stale socket, or a live one. A file that is
/// not a socket is an error (it is never removed).
pub fn occupant(path: &Path) -> io::Result<Occupant> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Nothing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"));
    }
    // A non-blocking connect (this runs on the runtime's threads): a local
    // socket answers at once, accepted into the backlog, refused when
    // nobody listens, or "try again" when its backlog is full (someone
    // listens).
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&s, &SocketAddrUnix::new(path)?) {
        Ok(()) | Err(rustix::io::Errno::AGAIN) => Ok(Occupant::Live),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(Occupant::Stale),
        Err(e) => Err(e.into()),
    }
}

/// A listening control socket.
pub struct ControlListener {
    sock: UnixListener,
    pub path: PathBuf,
    /// The inode of the socket file this process made: it removes the file
    /// at exit only if the path still names that one (after an upgrade it
    /// names the new process's).
    ino: u64,
}

impl ControlListener {
    /// Makes the socket at `path` (its directory too, mode 0700, when
    /// missing), mode 0600, and listens. A stale socket file there is
    /// replaced; a live one is not, unless `replace` (the process taking
    /// over from the one that listens there).
    pub fn bind(path: &Path, replace: bool) -> io::Result<ControlListener> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        if occupant(path)? == Occupant::Live && !replace {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "a running ucp-lb listens there"));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.new", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        // socket, bind, chmod, listen, rename: nobody can connect before
        // the mode is 0600 and the file has its name.
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(&tmp)?)?;
        let placed = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            let ino = std::fs::symlink_metadata(&tmp)?.ino();
            rustix::net::listen(&fd, 16)?;
            std::fs::rename(&tmp, path)?;
            Ok::<_, io::Error>(ino)
        })();
        let ino = match placed {
            Ok(ino) => ino,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let std = std::os::unix::net::UnixListener::from(fd);
        std.set_nonblocking(true)?;
        Ok(ControlListener { sock: UnixListener::from_std(std)?, path: path.to_owned(), ino })
    }

    /// The next connection from a process of this user (or root); others
    /// are closed at once.
    pub async fn accept(&self) -> io::Result<Conn> {
        loop {
            let (sock, _) = self.sock.accept().await?;
            let me = rustix::process::geteuid().as_raw();
            match sock.peer_cred() {
                Ok(c) if c.uid() == me || c.uid() == 0 => return Ok(Conn::new(sock)),
                Ok(c) => tracing::warn!(
                    uid = c.uid(),
                    pid = c.pid().unwrap_or(0),
                    "control socket: a process of another user connected: closed"
                ),
                Err(e) => tracing::warn!(error = %e, "control socket: cannot tell who connected: closed"),
            }
        }
    }

    /// Removes the socket file if it is still the one this process made.
    pub fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why a process could not connect to the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}: no control socket there (is ucp-lb running with this control_socket?)")]
    Missing(String),
    #[error("{0}: not a socket: refusing it")]
    NotSocket(String),
    #[error("{path}: owned by uid {owner}, not by this user (uid {me}): refusing it")]
    Owner { path: String, owner: u32, me: u32 },
    #[error("{path}: mode {mode:04o} lets group or others write to it: refusing it (it must be 0600)")]
    Mode { path: String, mode: u32 },
    #[error("{path}: the process listening there runs as uid {uid}, not as this user (uid {me}): refusing it")]
    Peer { path: String, uid: u32, me: u32 },
    #[error("{path}: {error}")]
    Io { path: String, error: io::Error },
}

/// One end of a control connection.
pub struct Conn {
    sock: UnixStream,
    /// One message at a time.
    sending: tokio::sync::Mutex<()>,
}

impl Conn {
    fn new(sock: UnixStream) -> Conn {
        Conn { sock, sending: tokio::sync::Mutex::new(()) }
    }

    /// The pid of the process at the other end, as the kernel says
    /// (`SO_PEERCRED`; none when it is in another pid namespace).
    pub fn peer_pid(&self) -> Option<u32> {
        self.sock.peer_cred().ok().and_then(|c| c.pid()).and_then(|p| u32::try_from(p).ok()).filter(|&p| p != 0)
    }

    /// Connects to the control socket at `path`, after checking that this
    /// user owns it and that no one else may write to it.
    pub async fn connect(path: &Path) -> Result<Conn, ConnectError> {
        let shown = path.display().to_string();
        let io = |error: io::Error| ConnectError::Io { path: shown.clone(), error };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ConnectError::Missing(shown)),
            Err(e) => return Err(io(e)),
        };
        if !meta.file_type().is_socket() {
            return Err(ConnectError::NotSocket(shown));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(ConnectError::Owner { path: shown, owner: meta.uid(), me });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(ConnectError::Mode { path: shown, mode: meta.mode() & 0o7777 });
        }
        let sock = UnixStream::connect(path).await.map_err(io)?;
        let cred = sock.peer_cred().map_err(io)?;
        if cred.uid() != me && cred.uid() != 0 {
            return Err(ConnectError::Peer { path: shown, uid: cred.uid(), me });
        }
        Ok(Conn::new(sock))
    }

    /// Sends `msg` with `fds` (at most [`MAX_FDS`]) as one message.
    pub async fn send<M: Serialize>(&self, msg: &M, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "control message too large"));
        }
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let _one = self.sending.lock().await;
        let mut sent = 0;
        while sent < frame.len() {
            // The descriptors go with the first bytes only.
            let with = if sent == 0 { fds } else { &[] };
            sent += self
                .sock
                .async_io(Interest::WRITABLE, || {
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut cmsg = SendAncillaryBuffer::new(&mut space);
                    if !with.is_empty() {
                        cmsg.push(SendAncillaryMessage::ScmRights(with));
                    }
                    let n = rustix::net::sendmsg(
                        &self.sock,
                        &[io::IoSlice::new(&frame[sent..])],
                        &mut cmsg,
                        SendFlags::NOSIGNAL,
                    )?;
                    if n == 0 { Err(io::ErrorKind::WriteZero.into()) } else { Ok(n) }
                })
                .await?;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, adding the descriptors that came
    /// with them to `fds`; false at end of stream before the first byte.
    async fn read_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .sock
                .async_io(Interest::READABLE, || {
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
                    let r = rustix::net::recvmsg(
                        &self.sock,
                        &mut [io::IoSliceMut::new(&mut buf[got..])],
                        &mut cmsg,
                        RecvFlags::CMSG_CLOEXEC,
                    )?;
                    for m in cmsg.drain() {
                        if let RecvAncillaryMessage::ScmRights(r) = m {
                            fds.extend(r);
                        }
                    }
                    if r.flags.contains(ReturnFlags::CTRUNC) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "too many descriptors with one message",
                        ));
                    }
                    Ok(r.bytes)
                })
                .await?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(true)
    }

    /// The next message and its descriptors; `None` when the other end has
    /// closed.
    pub async fn recv<M: DeserializeOwned>(&self) -> io::Result<Option<(M, Vec<OwnedFd>)>> {
        let mut fds = Vec::new();
        let mut len = [0u8; 4];
        if !self.read_exact(&mut len, &mut fds).await? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "control message too large"));
        }
        let mut body = vec![0u8; len];
        if !self.read_exact(&mut body, &mut fds).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let msg = serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Messages with and without descriptors, back to back: each arrives
    /// with exactly its own descriptors (the one it names, tested by
    /// writing through it).
    #[tokio::test]
    async fn each_message_arrives_with_its_own_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("c.sock");
        let l = ControlListener::bind(&path, false).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::symlink_metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);

        let (client, server) = tokio::join!(Conn::connect(&path), l.accept());
        let (client, server) = (client.unwrap(), server.unwrap());
        let pipes: Vec<_> = (0..40).map(|_| rustix::pipe::pipe().unwrap()).collect();
        let sender = async {
            for (i, (_, w)) in pipes.iter().enumerate() {
                let fds: Vec<BorrowedFd<'_>> = if i % 3 == 0 { vec![] } else { vec![w.as_fd()] };
                client.send(&(i, "x".repeat(i * 100)), &fds).await.unwrap();
            }
        };
        let receiver = async {
            let mut got = Vec::new();
            for _ in 0..pipes.len() {
                let ((i, _), fds): ((usize, String), Vec<OwnedFd>) = server.recv().await.unwrap().unwrap();
                got.push((i, fds));
            }
            got
        };
        let ((), got) = tokio::join!(sender, receiver);
        for (i, fds) in got {
            assert_eq!(fds.len(), usize::from(i % 3 != 0), "message {i}");
            if let Some(fd) = fds.first() {
                rustix::io::write(fd, &[i as u8]).unwrap();
                let mut b = [0u8; 1];
                rustix::io::read(&pipes[i].0, &mut b).unwrap();
                assert_eq!(b[0], i as u8, "message {i} came with its own pipe");
            }
        }
        drop(client);
        assert!(server.recv::<(usize, String)>().await.unwrap().is_none(), "end of stream");
        assert_eq!(occupant(&path).unwrap(), Occupant::Live);
        assert!(ControlListener::bind(&path, false).is_err(), "a live socket is not replaced");
        l.remove();
        assert_eq!(occupant(&path).unwrap(), Occupant::Nothing);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_socket_others_may_write_to_or_that_is_missing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        assert!(matches!(Conn::connect(&path).await, Err(ConnectError::Missing(_))));
        let _l = ControlListener::bind(&path, false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(matches!(Conn::connect(&path).await, Err(ConnectError::Mode { .. })));
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        assert!(matches!(Conn::connect(&dir.path().join("plain")).await, Err(ConnectError::NotSocket(_))));
    }
}
