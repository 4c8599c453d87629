//! An ordered, bounded, parallel map: worker threads apply a function to a stream of items
//! (here: decode and preprocess image files) while the caller consumes the results in input
//! order (here: batches them for the model).
//!
//! Memory stays bounded however many items there are: a dispatcher thread hands out items only
//! while fewer than `window` results are waiting for the consumer, so at most
//! `window + workers + 1` results exist at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

/// The results of [`ordered_map`], in input order. `None` for an item whose function panicked.
pub struct OrderedMap<T> {
    order: Receiver<Receiver<T>>,
}

impl<T> Iterator for OrderedMap<T> {
    type Item = Option<T>;

    fn next(&mut self) -> Option<Option<T>> {
        let slot = self.order.recv().ok()?;
        Some(slot.recv().ok())
    }
}

/// Applies `f` to every item on `workers` threads (at least 1), yielding the results in the
/// items' order with at most `window` (at least 1) finished results queued. Dropping the
/// iterator stops the dispatch; workers finish the item they hold and exit.
pub fn ordered_map<I, T, F>(
    items: impl IntoIterator<Item = I, IntoIter: Send + 'static>,
    workers: usize,
    window: usize,
    f: F,
) -> OrderedMap<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> T + Send + Sync + 'static,
{
    let (order_tx, order_rx) = sync_channel::<Receiver<T>>(window.max(1));
    let (job_tx, job_rx) = channel::<(I, SyncSender<T>)>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let f = Arc::new(f);
    let items = items.into_iter();
    thread::spawn(move || {
        for item in items {
            let (tx, rx) = sync_channel(1);
            // The consumer's slot first: this blocks while `window` results wait.
            if order_tx.send(rx).is_err() || job_tx.send((item, tx)).is_err() {
                break;
            }
        }
    });
    for _ in 0..workers.max(1) {
        let job_rx = Arc::clone(&job_rx);
        let f = Arc::clone(&f);
        thread::spawn(move || {
            // One core per worker: libtorch ops in `f` run inline, not in an OpenMP team.
            crate::ffi::serial_thread();
            loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(poisoned) => poisoned.into_inner().recv(),
                };
                let Ok((item, tx)) = job else { break };
                // A panic drops `tx`: the consumer sees `None` for this item and goes on.
                if let Ok(out) = catch_unwind(AssertUnwindSafe(|| f(item))) {
                    let _ = tx.send(out);
                }
            }
        });
    }
    OrderedMap { order: order_rx }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn keeps_order_with_uneven_work() {
        let out: Vec<_> = ordered_map(0..200u64, 4, 8, |i| {
            thread::sleep(Duration::from_micros((i * 7919) % 500));
            i * 2
        })
        .collect();
        assert_eq!(out, (0..200).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn bounded_in_flight() {
        let started = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&started);
        let mut it = ordered_map(0..1000usize, 2, 5, move |i| {
            s.fetch_add(1, Ordering::SeqCst);
            i
        });
        assert_eq!(it.next(), Some(Some(0)));
        thread::sleep(Duration::from_millis(100));
        let n = started.load(Ordering::SeqCst);
        assert!(
            n <= 5 + 2 + 2,
            "{n} items started while the consumer held one"
        );
    }

    /// Workers see one libtorch thread, as PyTorch's DataLoader workers; the caller keeps its own.
    #[test]
    fn workers_run_libtorch_on_one_thread() {
        tch::set_num_threads(2);
        let out: Vec<_> = ordered_map(0..8, 2, 4, |_| {
            // An op large enough that parallel_for would split it across a team.
            let sum = tch::Tensor::ones([1 << 20], (tch::Kind::Float, tch::Device::Cpu)).sum(None);
            (tch::get_num_threads(), sum.double_value(&[]))
        })
        .collect();
        assert!(
            out.iter().all(|r| *r == Some((1, (1 << 20) as f64))),
            "{out:?}"
        );
        assert_eq!(tch::get_num_threads(), 2);
    }

    #[test]
    fn panic_is_one_missing_item() {
        let out: Vec<_> = ordered_map(0..5, 2, 2, |i| {
            assert_ne!(i, 2, "boom");
            i
        })
        .collect();
        assert_eq!(out, [Some(0), Some(1), None, Some(3), Some(4)]);
    }
}
