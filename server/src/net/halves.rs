//! A TCP stream split into a read half and a write half for two tasks of one shard, plus a
//! [`Control`] that sees when bytes last moved and can cut the connection.
//!
//! glommio's stream keeps separate readiness sources for reading and writing, so a reader
//! task and a writer task can use it at once; each half borrows the stream only inside a
//! single `poll_*` call, never across an await.

use std::cell::{Cell, RefCell};
use std::io;
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.stream.borrow_mut();
        Pin::new(&mut *stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.stream.borrow_mut();
        Pin::new(&mut *stream).poll_close(cx)
    }
}
