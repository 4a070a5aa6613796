//! Memory accounting on a shard: how many bytes of requests it holds, and how many bytes of
//! responses each connection owes its client.
//!
//! A [`Budget`] is a shard's allowance for request bytes read from sockets and not yet
//! answered. A connection takes a [`Grant`] from it as a request's bytes arrive (never for
//! bytes only claimed by a size prefix) and the grant is returned when the request has been
//! answered. When the budget is spent, connections wait for it before reading further: the
//! shard stops reading sockets instead of buffering without end.
//!
//! A [`ResponseBacklog`] counts the bytes of one connection's responses that are ready (or,
//! for a Fetch, may become ready) but not yet written to the socket. Past its bound the
//! connection reads no more requests until its client has read some of what it is owed.
//!
//! [`Conversions`] bounds the memory of converting records (message formats, codecs): one
//! request converts at a time on a shard, and what conversions build is drawn on their own
//! budget until the request is answered.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::Semaphore;

use crate::shard::event::{WakeSlot, Watchers};

/// A shard's allowance of request bytes.
pub struct Budget {
    semaphore: Rc<Semaphore>,
    total_bytes: usize,
}

impl Budget {
    pub fn new(total_bytes: usize) -> Budget {
        Budget {
            semaphore: Rc::new(Semaphore::new(total_bytes as u64)),
            total_bytes,
        }
    }

    /// Bytes not granted right now.
    pub fn available_bytes(&self) -> usize {
        self.semaphore.available() as usize
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// A grant of nothing yet, to [`Grant::grow`] as bytes arrive.
    pub fn empty_grant(&self) -> Grant {
        Grant {
            semaphore: self.semaphore.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`Budget`]; given back when dropped.
pub struct Grant {
    semaphore: Rc<Semaphore>,
    bytes: usize,
}

impl Grant {
    /// Takes `more` bytes, waiting until the budget has them. The caller bounds `more` by
    /// the budget's total (a request never exceeds it), so the wait always ends.
    pub async fn grow(&mut self, more: usize) -> Result<(), glommio::GlommioError<()>> {
        if more == 0 {
            return Ok(());
        }
        self.semaphore.acquire(more as u64).await?;
        self.bytes += more;
        Ok(())
    }

    /// Takes `more` bytes if the budget has them now, without waiting.
    pub fn try_grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        if self.semaphore.try_acquire(more as u64).unwrap_or(false) {
            self.bytes += more;
            true
        } else {
            false
        }
    }

    /// Gives `fewer` of the granted bytes back at once.
    pub fn shrink(&mut self, fewer: usize) {
        let fewer = fewer.min(self.bytes);
        if fewer > 0 {
            self.bytes -= fewer;
            self.semaphore.signal(fewer as u64);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.semaphore.signal(self.bytes as u64);
        }
    }
}

/// What one conversion may use: the most one batch may decompress to, and the most bytes
/// of records it may build.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConversionLimits {
    pub max_decompressed_bytes: usize,
    pub max_output_bytes: usize,
}

/// A shard's memory for converting records: Produce v0–2 message sets to v2 batches,
/// batches to a topic's `compression.type`, KIP-467 key checks (which read inside
/// compressed batches), and stored batches down to message sets for Fetch v0–3.
///
/// Requests take turns ([`Conversions::turn`]): one request converts at a time on a shard,
/// which costs nothing (conversion is CPU work on the shard's one thread) and means at most
/// one batch is being decompressed at once, to at most `max_decompressed_bytes`. What the
/// conversions build is kept until the request is answered and drawn on the budget: a
/// conversion may build at most what is left of it. When that is too little, the request
/// waits, keeping its turn, until the other requests' converted records are released, and
/// tries again; only records the whole budget cannot hold are refused. Only the request
/// holding the turn ever waits for this budget, and nothing else waits for that request,
/// so the wait always ends.
pub struct Conversions {
    turns: Semaphore,
    budget: Budget,
    max_decompressed_bytes: usize,
}

impl Conversions {
    /// `total_bytes` of converted records at once; a batch decompresses to at most
    /// `max_batch_decompressed_bytes`.
    pub fn new(total_bytes: usize, max_batch_decompressed_bytes: usize) -> Conversions {
        Conversions {
            turns: Semaphore::new(1),
            budget: Budget::new(total_bytes),
            max_decompressed_bytes: max_batch_decompressed_bytes.min(total_bytes),
        }
    }

    /// Waits for this request's turn to convert.
    pub async fn turn(&self) -> ConversionTurn<'_> {
        // The semaphore is never closed, so the acquisition only ends with a permit.
        let permit = self.turns.acquire_permit(1).await.ok();
        ConversionTurn {
            conversions: self,
            _permit: permit,
            built: self.budget.empty_grant(),
        }
    }

    /// Bytes of converted records held right now, by every request.
    pub fn held_bytes(&self) -> usize {
        self.budget.total_bytes() - self.budget.available_bytes()
    }
}

/// One request's turn to convert, and the budget its converted records hold.
pub struct ConversionTurn<'a> {
    conversions: &'a Conversions,
    _permit: Option<glommio::sync::Permit<'a>>,
    built: Grant,
}

impl ConversionTurn<'_> {
    /// Runs one conversion, allowed to build at most `max_output_bytes` (and what the budget
    /// has left), and keeps the budget for the `built_bytes` of what it returns. A
    /// conversion refused as `too_large` while other requests hold converted records is
    /// tried again once they are released.
    pub async fn convert<T, E>(
        &mut self,
        max_output_bytes: usize,
        mut convert: impl FnMut(ConversionLimits) -> Result<T, E>,
        built_bytes: impl Fn(&T) -> usize,
        too_large: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let budget = &self.conversions.budget;
        let limits = |available: usize| ConversionLimits {
            max_decompressed_bytes: self.conversions.max_decompressed_bytes,
            max_output_bytes: max_output_bytes.min(available),
        };
        let available = budget.available_bytes();
        let mut result = convert(limits(available));
        // What this request may have once every other request's records are released.
        let most = budget.total_bytes() - self.built.bytes();
        if matches!(&result, Err(e) if too_large(e)) && available < most.min(max_output_bytes) {
            let mut everything = budget.empty_grant();
            if everything.grow(most).await.is_ok() {
                drop(everything);
                result = convert(limits(most));
            }
        }
        if let Ok(built) = &result {
            // Nothing ran since the conversion and only this turn takes from the budget, so
            // what it built (within what was available) is there to take.
            let taken = self.built.try_grow(built_bytes(built));
            debug_assert!(taken, "a conversion built more than its limit");
        }
        result
    }

    /// Ends the turn; the returned grant holds the converted records' budget until the
    /// request is answered (dropped).
    pub fn finish(self) -> Grant {
        self.built
    }
}

/// The response bytes one connection owes its client.
pub struct ResponseBacklog {
    bytes: Cell<usize>,
    max_bytes: usize,
    room: Watchers,
}

impl ResponseBacklog {
    pub fn new(max_bytes: usize) -> Rc<ResponseBacklog> {
        Rc::new(ResponseBacklog {
            bytes: Cell::new(0),
            max_bytes,
            room: Watchers::default(),
        })
    }

    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn is_full(&self) -> bool {
        self.bytes.get() >= self.max_bytes
    }

    /// A response of `bytes` is waiting to be written.
    pub fn add(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() + bytes);
    }

    /// `bytes` of responses were written (or will never be).
    pub fn remove(&self, bytes: usize) {
        let was_full = self.is_full();
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
        if was_full && !self.is_full() {
            self.room.notify_all();
        }
    }

    /// Counts `bytes` a response may grow to until the returned reservation is dropped.
    pub fn reserve(self: &Rc<Self>, bytes: usize) -> Reservation {
        self.add(bytes);
        Reservation {
            backlog: self.clone(),
            bytes,
        }
    }

    /// Resolves once the backlog is below its bound.
    pub async fn wait_for_room(&self) {
        while self.is_full() {
            let slot = WakeSlot::new();
            self.room.register(&slot);
            slot.wait().await;
        }
    }
}

/// Response bytes held in a [`ResponseBacklog`] for a response still being built.
pub struct Reservation {
    backlog: Rc<ResponseBacklog>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.backlog.remove(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_executor(test: impl std::future::Future<Output = ()> + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test);
    }

    #[test]
    fn grants_return_their_bytes_when_dropped() {
        on_executor(async {
            let budget = Budget::new(100);
            let mut a = budget.empty_grant();
            a.grow(60).await.unwrap();
            let mut b = budget.empty_grant();
            b.grow(40).await.unwrap();
            assert_eq!(budget.available_bytes(), 0);
            drop(a);
            assert_eq!(budget.available_bytes(), 60);
            b.grow(60).await.unwrap();
            assert_eq!(b.bytes(), 100);
            b.shrink(30);
            assert_eq!(budget.available_bytes(), 30);
            drop(b);
            assert_eq!(budget.available_bytes(), 100);
        });
    }

    #[test]
    fn a_grant_waits_until_the_budget_has_room() {
        on_executor(async {
            let budget = Budget::new(10);
            let mut held = budget.empty_grant();
            held.grow(10).await.unwrap();
            let mut waiting = budget.empty_grant();
            let task = glommio::spawn_local(async move {
                waiting.grow(5).await.unwrap();
                waiting
            });
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            drop(held);
            let waiting = task.await;
            assert_eq!(waiting.bytes(), 5);
        });
    }

    /// A conversion that builds `n` bytes if its limits allow.
    fn builds(n: usize) -> impl FnMut(ConversionLimits) -> Result<Vec<u8>, usize> {
        move |limits| {
            if n <= limits.max_output_bytes {
                Ok(vec![1; n])
            } else {
                Err(limits.max_output_bytes)
            }
        }
    }

    #[test]
    fn conversions_wait_for_other_requests_records_and_refuse_only_what_no_budget_holds() {
        on_executor(async {
            let conversions = Rc::new(Conversions::new(100, 1 << 20));
            let mut first = conversions.turn().await;
            let kept = first
                .convert(usize::MAX, builds(60), Vec::len, |_| true)
                .await;
            assert_eq!(kept.map(|v| v.len()), Ok(60));
            // The first request's records are held until it is answered, after its turn.
            let held = first.finish();
            assert_eq!(conversions.held_bytes(), 60);
            let answered = glommio::spawn_local(async move {
                glommio::executor().yield_task_queue_now().await;
                drop(held);
            });
            let mut second = conversions.turn().await;
            // 70 bytes do not fit beside the 60 held: the second waits for them, then fits.
            let built = second
                .convert(usize::MAX, builds(70), Vec::len, |_| true)
                .await;
            assert_eq!(built.map(|v| v.len()), Ok(70));
            answered.await;
            assert_eq!(conversions.held_bytes(), 70);
            // What the whole budget cannot hold beside its own records is refused.
            let refused = second
                .convert(usize::MAX, builds(40), Vec::len, |_| true)
                .await;
            assert_eq!(refused, Err(30));
            // And a conversion's own limit is kept.
            let capped = second.convert(10, builds(20), Vec::len, |_| true).await;
            assert_eq!(capped, Err(10));
            drop(second.finish());
            assert_eq!(conversions.held_bytes(), 0);
            assert_eq!(Conversions::new(100, 1 << 20).max_decompressed_bytes, 100);
        });
    }

    #[test]
    fn requests_take_turns_to_convert() {
        on_executor(async {
            let conversions = Rc::new(Conversions::new(100, 100));
            let turn = conversions.turn().await;
            let c = conversions.clone();
            let began = Rc::new(Cell::new(false));
            let b = began.clone();
            let waiting = glommio::spawn_local(async move {
                let _turn = c.turn().await;
                b.set(true);
            });
            glommio::executor().yield_task_queue_now().await;
            assert!(!began.get(), "a second turn began during the first");
            drop(turn);
            waiting.await;
            assert!(began.get());
        });
    }

    #[test]
    fn the_backlog_lets_a_reader_go_on_once_below_its_bound() {
        on_executor(async {
            let backlog = ResponseBacklog::new(100);
            backlog.add(70);
            let reservation = backlog.reserve(50);
            assert!(backlog.is_full());
            let b = backlog.clone();
            let reader = glommio::spawn_local(async move { b.wait_for_room().await });
            glommio::executor().yield_task_queue_now().await;
            drop(reservation);
            reader.await;
            assert_eq!(backlog.bytes(), 70);
            backlog.remove(70);
            assert_eq!(backlog.bytes(), 0);
        });
    }
}
