// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A bounded single-producer, single-consumer pipe whose storage is borrowed from the caller's
//! frame: no allocation, no reference count.
//!
//! The two halves of an HTTP/1 proxied request (downstream and upstream) run concurrently in
//! one task (`try_join!`) and pass each other a few `HttpTask`s. A `tokio::sync::mpsc` channel
//! for each direction costs two allocations (the shared channel and its first block), a
//! semaphore and atomic reference counts per request. This pipe keeps the same interface for
//! what the proxy uses (reserve a slot and send into it later, send, receive, try to receive,
//! closed when the other half is dropped), with its slots in a fixed array behind a mutex
//! that is never contended in practice (both halves are polled by the same task).
//!
//! This file depends on `std` alone, so its unit tests run without the rest of the crate:
//! `rustc --edition 2021 --test src/pipe.rs`.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// The storage of a pipe of at most `N` items in flight. Lives in the caller's frame; its
/// halves borrow it.
pub struct Pipe<T, const N: usize> {
    inner: Mutex<Inner<T, N>>,
}

struct Inner<T, const N: usize> {
    slots: [Option<T>; N],
    head: usize,
    len: usize,
    /// Slots promised to permits not yet used.
    reserved: usize,
    sender: bool,
    receiver: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

/// The pipe's receiver has been dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendError;

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pipe closed")
    }
}

impl std::error::Error for SendError {}

/// Why a slot could not be reserved right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// Every slot is taken.
    Full,
    /// The receiver has been dropped.
    Closed,
}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full => "pipe full",
            TrySendError::Closed => "pipe closed",
        })
    }
}

impl std::error::Error for TrySendError {}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl<T, const N: usize> Default for Pipe<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Pipe<T, N> {
    pub fn new() -> Self {
        assert!(N > 0, "a pipe needs at least one slot");
        Pipe {
            inner: Mutex::new(Inner {
                slots: std::array::from_fn(|_| None),
                head: 0,
                len: 0,
                reserved: 0,
                sender: false,
                receiver: false,
                rx_waker: None,
                tx_waker: None,
            }),
        }
    }

    /// The two halves. The exclusive borrow makes this once per pipe.
    pub fn split(&mut self) -> (Sender<'_, T, N>, Receiver<'_, T, N>) {
        {
            let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            inner.sender = true;
            inner.receiver = true;
        }
        let pipe = &*self;
        (Sender { pipe }, Receiver { pipe })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T, N>> {
        // A panic while the lock was held left the state consistent (no step of ours can
        // panic half-way), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T, const N: usize> Inner<T, N> {
    fn has_room(&self) -> bool {
        self.len + self.reserved < N
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = self.slots[self.head].take();
        self.head = (self.head + 1) % N;
        self.len -= 1;
        item
    }

    fn push_reserved(&mut self, item: T) {
        debug_assert!(self.reserved > 0 && self.len < N);
        self.reserved -= 1;
        let tail = (self.head + self.len) % N;
        self.slots[tail] = Some(item);
        self.len += 1;
    }
}

/// The sending half.
pub struct Sender<'a, T, const N: usize> {
    pipe: &'a Pipe<T, N>,
}

/// A slot reserved for one item: sending into it cannot fail or wait. Dropped unused, the
/// slot is free again.
pub struct Permit<'s, T, const N: usize> {
    pipe: &'s Pipe<T, N>,
}

impl<T, const N: usize> fmt::Debug for Permit<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl<'a, T, const N: usize> Sender<'a, T, N> {
    /// A slot if one is free now.
    pub fn try_reserve(&self) -> Result<Permit<'_, T, N>, TrySendError> {
        let mut inner = self.pipe.lock();
        if !inner.receiver {
            return Err(TrySendError::Closed);
        }
        if !inner.has_room() {
            return Err(TrySendError::Full);
        }
        inner.reserved += 1;
        Ok(Permit { pipe: self.pipe })
    }

    /// A slot, once one is free; an error once the receiver is gone. Cancel-safe: nothing is
    /// held until it returns.
    pub async fn reserve(&self) -> Result<Permit<'_, T, N>, SendError> {
        poll_fn(|cx| {
            let mut inner = self.pipe.lock();
            if !inner.receiver {
                return Poll::Ready(Err(SendError));
            }
            if inner.has_room() {
                inner.reserved += 1;
                return Poll::Ready(Ok(Permit { pipe: self.pipe }));
            }
            register(&mut inner.tx_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Send one item, waiting for a slot. The item is dropped if the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), SendError> {
        self.reserve().await?.send(item);
        Ok(())
    }

    /// The receiver has been dropped.
    pub fn is_closed(&self) -> bool {
        !self.pipe.lock().receiver
    }
}

impl<T, const N: usize> Drop for Sender<'_, T, N> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.pipe.lock();
            inner.sender = false;
            inner.rx_waker.take()
        };
        wake(waker);
    }
}

impl<T, const N: usize> Permit<'_, T, N> {
    /// Put the item into the reserved slot.
    pub fn send(self, item: T) {
        let (waker, dropped) = {
            let mut inner = self.pipe.lock();
            if inner.receiver {
                inner.push_reserved(item);
                (inner.rx_waker.take(), None)
            } else {
                // Nobody will read it: give the slot back and drop the item outside the lock.
                inner.reserved -= 1;
                (None, Some(item))
            }
        };
        std::mem::forget(self);
        drop(dropped);
        wake(waker);
    }
}

impl<T, const N: usize> Drop for Permit<'_, T, N> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.pipe.lock();
            inner.reserved -= 1;
            inner.tx_waker.take()
        };
        wake(waker);
    }
}

/// The receiving half.
pub struct Receiver<'a, T, const N: usize> {
    pipe: &'a Pipe<T, N>,
}

impl<T, const N: usize> Receiver<'_, T, N> {
    /// The next item; `None` once the pipe is empty and the sender (with any permit of it) is
    /// gone. Cancel-safe: an item is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut inner = self.pipe.lock();
            if let Some(item) = inner.pop() {
                let waker = inner.tx_waker.take();
                drop(inner);
                wake(waker);
                return Poll::Ready(Some(item));
            }
            if !inner.sender && inner.reserved == 0 {
                return Poll::Ready(None);
            }
            register(&mut inner.rx_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The next item if one is there now.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut inner = self.pipe.lock();
        let item = inner.pop()?;
        let waker = inner.tx_waker.take();
        drop(inner);
        wake(waker);
        Some(item)
    }
}

impl<T, const N: usize> Drop for Receiver<'_, T, N> {
    fn drop(&mut self) {
        // Items left in the pipe are dropped now, as a channel's receiver drops them.
        let mut left: [Option<T>; N] = std::array::from_fn(|_| None);
        let waker = {
            let mut inner = self.pipe.lock();
            inner.receiver = false;
            let mut i = 0;
            while let Some(item) = inner.pop() {
                left[i] = Some(item);
                i += 1;
            }
            inner.tx_waker.take()
        };
        drop(left);
        wake(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    fn poll<F: Future>(f: std::pin::Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(w))
    }

    fn now<F: Future>(f: F) -> Option<F::Output> {
        let (_, w) = waker();
        match poll(pin!(f), &w) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn items_arrive_in_order_and_end_after_the_sender() {
        let mut pipe = Pipe::<u32, 4>::new();
        let (tx, mut rx) = pipe.split();
        for round in 0..5 {
            for i in 0..4 {
                assert_eq!(now(tx.send(round * 10 + i)), Some(Ok(())));
            }
            assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
            for i in 0..4 {
                assert_eq!(now(rx.recv()), Some(Some(round * 10 + i)));
            }
            assert_eq!(rx.try_recv(), None);
            assert_eq!(now(rx.recv()), None, "pending while the sender lives");
        }
        now(tx.send(7)).unwrap().unwrap();
        drop(tx);
        assert_eq!(now(rx.recv()), Some(Some(7)), "what was sent is still read");
        assert_eq!(now(rx.recv()), Some(None));
    }

    #[test]
    fn a_permit_holds_its_slot_and_gives_it_back_when_dropped() {
        let mut pipe = Pipe::<&str, 2>::new();
        let (tx, mut rx) = pipe.split();
        let a = tx.try_reserve().unwrap();
        let b = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        b.send("b");
        drop(a);
        let c = tx.try_reserve().unwrap();
        assert_eq!(rx.try_recv(), Some("b"));
        c.send("c");
        assert_eq!(rx.try_recv(), Some("c"));
        // An outstanding permit means an item may still come: the receiver waits.
        let p = tx.try_reserve().unwrap();
        assert_eq!(now(rx.recv()), None);
        drop(p);
        drop(tx);
        assert_eq!(now(rx.recv()), Some(None));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_sender_dropping() {
        let mut pipe = Pipe::<u8, 1>::new();
        let (tx, mut rx) = pipe.split();
        let (count, w) = waker();
        {
            let mut recv = pin!(rx.recv());
            assert!(poll(recv.as_mut(), &w).is_pending());
            now(tx.send(1)).unwrap().unwrap();
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(poll(recv.as_mut(), &w), Poll::Ready(Some(1)));
        }
        let mut recv = pin!(rx.recv());
        assert!(poll(recv.as_mut(), &w).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(recv.as_mut(), &w), Poll::Ready(None));
    }

    #[test]
    fn a_waiting_sender_is_woken_by_room_and_by_the_receiver_dropping() {
        let mut pipe = Pipe::<u8, 1>::new();
        let (tx, mut rx) = pipe.split();
        let (count, w) = waker();
        now(tx.send(1)).unwrap().unwrap();
        {
            let mut reserve = pin!(tx.reserve());
            assert!(poll(reserve.as_mut(), &w).is_pending());
            assert_eq!(rx.try_recv(), Some(1));
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            let Poll::Ready(Ok(permit)) = poll(reserve.as_mut(), &w) else {
                panic!("a slot is free")
            };
            permit.send(2);
        }
        assert!(!tx.is_closed());
        let mut send = pin!(tx.send(3));
        assert!(poll(send.as_mut(), &w).is_pending());
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(send.as_mut(), &w), Poll::Ready(Err(SendError)));
        assert!(tx.is_closed());
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Closed);
    }

    #[test]
    fn a_waiting_sender_is_woken_by_an_awaited_receive() {
        let mut pipe = Pipe::<u8, 1>::new();
        let (tx, mut rx) = pipe.split();
        let (count, w) = waker();
        now(tx.send(1)).unwrap().unwrap();
        let mut reserve = pin!(tx.reserve());
        assert!(poll(reserve.as_mut(), &w).is_pending());
        assert_eq!(now(rx.recv()), Some(Some(1)));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "room made by recv wakes the sender"
        );
        assert!(matches!(poll(reserve.as_mut(), &w), Poll::Ready(Ok(_))));
    }

    #[test]
    fn a_waiting_sender_is_woken_by_a_permit_given_back() {
        let mut pipe = Pipe::<u8, 1>::new();
        let (tx, _rx) = pipe.split();
        let (count, w) = waker();
        let held = tx.try_reserve().unwrap();
        let mut reserve = pin!(tx.reserve());
        assert!(poll(reserve.as_mut(), &w).is_pending());
        drop(held);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(reserve.as_mut(), &w), Poll::Ready(Ok(_))));
    }

    #[test]
    fn nothing_is_leaked_or_kept_once_the_receiver_is_gone() {
        let item = Arc::new(());
        let mut pipe = Pipe::<Arc<()>, 4>::new();
        let (tx, rx) = pipe.split();
        now(tx.send(item.clone())).unwrap().unwrap();
        now(tx.send(item.clone())).unwrap().unwrap();
        let permit = tx.try_reserve().unwrap();
        assert_eq!(Arc::strong_count(&item), 3);
        drop(rx);
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "queued items dropped with the receiver"
        );
        permit.send(item.clone());
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "an item sent into a closed pipe is dropped"
        );
        assert_eq!(now(tx.send(item.clone())), Some(Err(SendError)));
        assert_eq!(Arc::strong_count(&item), 1);
        drop(tx);
        drop(pipe);
    }

    #[test]
    fn a_cancelled_wait_takes_nothing() {
        let mut pipe = Pipe::<u8, 1>::new();
        let (tx, mut rx) = pipe.split();
        let (_, w) = waker();
        {
            let mut recv = pin!(rx.recv());
            assert!(poll(recv.as_mut(), &w).is_pending());
        }
        now(tx.send(5)).unwrap().unwrap();
        {
            let mut reserve = pin!(tx.reserve());
            assert!(poll(reserve.as_mut(), &w).is_pending());
        }
        assert_eq!(rx.try_recv(), Some(5));
        assert!(
            tx.try_reserve().is_ok(),
            "the cancelled reserve held no slot"
        );
    }
}
