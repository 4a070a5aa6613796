//! A TCP stream split into a read half and a write half for two tasks of one shard, plus a
//! [`Control`] that sees when bytes last moved and can cut the connection.
//!
//! glommio's stream keeps separate readiness sources for reading and writing, so a reader
//! task and a writer task can use it at once; each half borrows the stream only inside a
//! single `poll_*` call, never across an await.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

struct Shared {
    stream: RefCell<TcpStream>,
    /// When bytes were last read from or written to the socket.
    last_io: Cell<Instant>,
}

/// The most buffers one vectored write passes (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

pub struct ReadHalf(Rc<Shared>);
pub struct WriteHalf(Rc<Shared>);
/// Watches and cuts the connection; keeps the socket open while it lives.
pub struct Control(Rc<Shared>);

pub fn split(stream: TcpStream) -> (ReadHalf, WriteHalf, Control) {
    let shared = Rc::new(Shared {
        stream: RefCell::new(stream),
        last_io: Cell::new(Instant::now()),
    });
    (
        ReadHalf(shared.clone()),
        WriteHalf(shared.clone()),
        Control(shared),
    )
}

impl Control {
    /// When bytes last moved in either direction.
    pub fn last_io(&self) -> Instant {
        self.0.last_io.get()
    }

    /// Ends both directions: the reader sees the end of the stream, the writer an error, and
    /// the client a closed connection.
    pub fn shut_down(&self) {
        let fd = self.0.stream.borrow().as_raw_fd();
        // SAFETY: plain syscall on a descriptor this connection owns and keeps open (the
        // `Rc` held here keeps the stream alive).
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// A buffer whose spare capacity a read may fill without zeroing it first.
pub trait SpareCapacity {
    fn spare(&mut self) -> &mut [MaybeUninit<u8>];
    /// # Safety
    /// The first `n` bytes of the spare capacity must have been written.
    unsafe fn commit(&mut self, n: usize);
}

impl SpareCapacity for Vec<u8> {
    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }
    unsafe fn commit(&mut self, n: usize) {
        // SAFETY: the caller wrote the first `n` spare bytes.
        unsafe { self.set_len(self.len() + n) }
    }
}

impl SpareCapacity for BytesMut {
    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }
    unsafe fn commit(&mut self, n: usize) {
        // SAFETY: the caller wrote the first `n` spare bytes.
        unsafe { self.set_len(self.len() + n) }
    }
}

impl ReadHalf {
    /// Reads what the socket holds right now, at most `max` bytes, into the spare capacity
    /// of `buf`, which is not zeroed first: only the bytes that arrive touch memory. `None`
    /// when nothing has arrived yet; `Some(0)` at the end of the stream.
    pub fn try_read_into(
        &mut self,
        buf: &mut impl SpareCapacity,
        max: usize,
    ) -> io::Result<Option<usize>> {
        let spare = buf.spare();
        let len = spare.len().min(max);
        if len == 0 {
            return Ok(Some(0));
        }
        let fd = self.0.stream.borrow().as_raw_fd();
        // SAFETY: `spare` is valid for writes of `len` bytes; recv writes at most that many
        // and reports how many. MSG_DONTWAIT: never blocks the shard.
        let got = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr() as *mut libc::c_void,
                len,
                libc::MSG_DONTWAIT,
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let got = got as usize;
        // SAFETY: recv wrote `got` bytes at the start of the spare capacity.
        unsafe { buf.commit(got) };
        if got > 0 {
            self.0.last_io.set(Instant::now());
        }
        Ok(Some(got))
    }

    /// Waits for the next byte, holding no buffer meanwhile; `None` at the end of the
    /// stream.
    pub async fn read_byte(&mut self) -> io::Result<Option<u8>> {
        let mut byte = [0u8; 1];
        let n = futures_lite::AsyncReadExt::read(self, &mut byte).await?;
        Ok((n == 1).then_some(byte[0]))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let result = {
            let mut stream = self.0.stream.borrow_mut();
            Pin::new(&mut *stream).poll_read(cx, buf)
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.0.last_io.set(Instant::now());
        }
        result
    }
}

impl WriteHalf {
    /// Writes all of `parts`, in order, with vectored writes (as many parts per system call
    /// as the socket takes).
    pub async fn write_all_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        // The first part not wholly written, and how much of it is.
        let (mut first, mut written) = (0, 0);
        while first < parts.len() {
            if written == parts[first].len() {
                first += 1;
                written = 0;
                continue;
            }
            let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[first][written..]))
                .chain(parts[first + 1..].iter().map(|p| IoSlice::new(p)))
                .collect();
            let mut n = futures_lite::AsyncWriteExt::write_vectored(self, &slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 && first < parts.len() {
                let left = parts[first].len() - written;
                if n >= left {
                    n -= left;
                    first += 1;
                    written = 0;
                } else {
                    written += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = {
            let mut stream = self.0.stream.borrow_mut();
            Pin::new(&mut *stream).poll_write(cx, buf)
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.0.last_io.set(Instant::now());
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs: Vec<IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .take(MAX_IOVECS)
            .copied()
            .collect();
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        let fd = self.0.stream.borrow().as_raw_fd();
        // SAFETY: `IoSlice` has the layout of `iovec` on Unix (std guarantees it); the
        // message header points at `bufs`, which lives across the call, and sendmsg only
        // reads the buffers. MSG_DONTWAIT: never blocks the shard.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if sent >= 0 {
            if sent > 0 {
                self.0.last_io.set(Instant::now());
            }
            return Poll::Ready(Ok(sent as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            // The socket is full: wait for room through the stream, which writes (part
            // of) the first buffer once there is.
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                let first: &[u8] = first;
                self.poll_write(cx, first)
            }
            _ => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.stream.borrow_mut();
        Pin::new(&mut *stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.stream.borrow_mut();
        Pin::new(&mut *stream).poll_close(cx)
    }
}
