//! Trains: the pure core of the watcher. Changes collect until a quiet period (the entry's
//! `debounce`) passes, then one train leaves; changes during a reload wait for the next one.
//!
//! Owns [`Trains`] (no I/O, no clock of its own) and [`drive`], which runs them against a
//! channel of changes, the pause switch and a reload callback. It may not touch the
//! filesystem, the control loop or status: the watcher task (`mod.rs`) wires those in.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The train logic of one entry, driven by events and time (no I/O, no clock of its own).
///
/// Invariants: at most one train runs at a time (`take` refuses while one runs); a burst
/// yields one train (changes only extend the quiet period); nothing leaves while paused.
#[derive(Debug)]
pub struct Trains {
    debounce: Duration,
    /// A stream that never goes quiet still leaves after this long.
    max_wait: Duration,
    files: Vec<String>,
    seen: HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    running: bool,
    paused: bool,
    /// Leave without waiting for quiet (after `resume`).
    forced: bool,
}

impl Trains {
    pub fn new(debounce: Duration) -> Trains {
        Trains {
            debounce,
            max_wait: (debounce * 10).max(Duration::from_secs(3)),
            files: Vec::new(),
            seen: HashSet::new(),
            first: None,
            last: None,
            running: false,
            paused: false,
            forced: false,
        }
    }

    /// Changed files seen at `now` (duplicates collapse).
    pub fn change(&mut self, files: impl IntoIterator<Item = String>, now: Instant) {
        let mut any = false;
        for f in files {
            any = true;
            if self.seen.insert(f.clone()) {
                self.files.push(f);
            }
        }
        if any {
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
    }

    /// When the waiting train leaves (None: nothing waits, a train runs, or paused).
    pub fn due(&self) -> Option<Instant> {
        if self.running || self.paused || self.files.is_empty() {
            return None;
        }
        let first = self.first?;
        if self.forced {
            return Some(first);
        }
        let quiet = self.last? + self.debounce;
        Some(quiet.min(first + self.max_wait))
    }

    /// The files of the train leaving at `now`, if one is due; it then runs until `finished`.
    pub fn take(&mut self, now: Instant) -> Option<Vec<String>> {
        if self.due()? > now {
            return None;
        }
        self.running = true;
        self.forced = false;
        self.first = None;
        self.last = None;
        self.seen.clear();
        Some(std::mem::take(&mut self.files))
    }

    /// The running train finished; what came meanwhile waits for its own quiet period.
    pub fn finished(&mut self) {
        self.running = false;
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Unpauses; everything collected meanwhile leaves as one train at once.
    pub fn resume(&mut self) {
        self.paused = false;
        if !self.files.is_empty() {
            self.forced = true;
        }
    }

    pub fn pending(&self) -> usize {
        self.files.len()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

/// Runs trains: collects `changes`, follows `paused`, and calls `reload` with each train's
/// files, never two at once. `observe` sees the state after every step (for status).
/// Returns when `changes` closes.
pub async fn drive<F, Fut>(
    mut trains: Trains,
    mut changes: mpsc::UnboundedReceiver<Vec<String>>,
    mut paused: watch::Receiver<bool>,
    mut reload: F,
    mut observe: impl FnMut(&Trains),
) where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut running: Option<std::pin::Pin<Box<Fut>>> = None;
    let mut paused_open = true;
    if *paused.borrow_and_update() {
        trains.pause();
    }
    loop {
        observe(&trains);
        let due = trains.due();
        tokio::select! {
            c = changes.recv() => match c {
                Some(files) => trains.change(files, Instant::now()),
                None => return,
            },
            _ = sleep_until_opt(due) => {
                if let Some(files) = trains.take(Instant::now()) {
                    running = Some(Box::pin(reload(files)));
                }
            }
            _ = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                trains.finished();
            }
            r = paused.changed(), if paused_open => {
                if r.is_err() {
                    paused_open = false;
                    continue;
                }
                if *paused.borrow_and_update() {
                    trains.pause();
                } else {
                    trains.resume();
                }
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;

    const D: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_one_train_after_quiet() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        for k in 0..200u64 {
            t.change([format!("f{k}")], t0 + ms(k));
        }
        // Still changing at 199 ms: due 200 ms after the last change, not before.
        assert_eq!(t.due(), Some(t0 + ms(399)));
        assert!(t.take(t0 + ms(398)).is_none());
        let files = t.take(t0 + ms(399)).unwrap();
        assert_eq!(files.len(), 200);
        assert!(t.is_running());
        assert_eq!(t.due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_collapse_and_keep_order() {
        let mut t = Trains::new(D);
        let now = Instant::now();
        t.change(["b".to_string(), "a".to_string(), "b".to_string()], now);
        t.change(["a".to_string()], now);
        assert_eq!(t.take(now + D).unwrap(), vec!["b", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_during_a_reload_wait_for_the_next_train() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        t.change(["a".into()], t0);
        assert!(t.take(t0 + D).is_some());
        t.change(["b".into()], t0 + ms(300));
        t.change(["c".into()], t0 + ms(400));
        // Never a second train while one runs, however long it takes.
        assert_eq!(t.due(), None);
        assert!(t.take(t0 + ms(5000)).is_none());
        t.finished();
        assert_eq!(t.due(), Some(t0 + ms(600)));
        assert_eq!(t.take(t0 + ms(5000)).unwrap(), vec!["b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_stream_still_leaves_after_max_wait() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        for k in 0..100u64 {
            t.change([format!("log{k}")], t0 + ms(k * 100));
        }
        assert_eq!(t.due(), Some(t0 + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_accumulates_and_resume_leaves_at_once() {
        let mut t = Trains::new(D);
        let t0 = Instant::now();
        t.pause();
        t.change(["a".into()], t0);
        t.change(["b".into()], t0 + ms(10_000));
        assert_eq!(t.due(), None);
        assert!(t.take(t0 + ms(60_000)).is_none());
        assert_eq!(t.pending(), 2);
        t.resume();
        assert_eq!(t.take(t0 + ms(10_001)).unwrap(), vec!["a", "b"]);
        t.finished();
        assert_eq!(t.due(), None);
    }

    type Calls = Arc<StdMutex<Vec<(Duration, Vec<String>)>>>;

    /// The driver with a fake reload that takes 1 s, under paused time.
    struct Harness {
        tx: mpsc::UnboundedSender<Vec<String>>,
        pause: watch::Sender<bool>,
        calls: Calls,
        active: Arc<StdMutex<u32>>,
        t0: Instant,
    }

    fn harness() -> Harness {
        let (tx, rx) = mpsc::unbounded_channel();
        let pause = watch::channel(false).0;
        let calls: Calls = Default::default();
        let active: Arc<StdMutex<u32>> = Default::default();
        let t0 = Instant::now();
        let (c, a, prx) = (calls.clone(), active.clone(), pause.subscribe());
        tokio::spawn(drive(
            Trains::new(D),
            rx,
            prx,
            move |files| {
                let (c, a) = (c.clone(), a.clone());
                async move {
                    {
                        let mut n = a.lock().unwrap();
                        *n += 1;
                        assert_eq!(*n, 1, "two reloads of one entry at once");
                    }
                    c.lock().unwrap().push((t0.elapsed(), files));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    *a.lock().unwrap() -= 1;
                }
            },
            |_| {},
        ));
        Harness {
            tx,
            pause,
            calls,
            active,
            t0,
        }
    }

    async fn at(h: &Harness, t: u64) {
        tokio::time::sleep_until(h.t0 + ms(t)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn driver_burst_then_changes_during_reload() {
        let h = harness();
        for k in 0..50 {
            h.tx.send(vec![format!("f{k}")]).unwrap();
        }
        at(&h, 100).await;
        assert!(h.calls.lock().unwrap().is_empty(), "fired before quiet");
        at(&h, 250).await;
        assert_eq!(h.calls.lock().unwrap().len(), 1);
        assert_eq!(h.calls.lock().unwrap()[0].1.len(), 50);
        // During the 1 s reload: two more changes, well apart.
        at(&h, 400).await;
        h.tx.send(vec!["g".into()]).unwrap();
        at(&h, 900).await;
        h.tx.send(vec!["h".into()]).unwrap();
        at(&h, 1150).await;
        assert_eq!(
            h.calls.lock().unwrap().len(),
            1,
            "second train while one runs"
        );
        at(&h, 1300).await;
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].1, vec!["g", "h"]);
        // Left right after the first finished (quiet period already over).
        assert!(
            calls[1].0 >= ms(1200) && calls[1].0 < ms(1250),
            "{:?}",
            calls[1].0
        );
        assert_eq!(*h.active.lock().unwrap(), 1);
        at(&h, 5000).await;
        assert_eq!(h.calls.lock().unwrap().len(), 2);
        assert_eq!(*h.active.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn driver_pause_resume() {
        let h = harness();
        h.pause.send_replace(true);
        at(&h, 10).await;
        h.tx.send(vec!["a".into()]).unwrap();
        at(&h, 3000).await;
        h.tx.send(vec!["b".into()]).unwrap();
        at(&h, 20_000).await;
        assert!(h.calls.lock().unwrap().is_empty(), "reloaded while paused");
        h.pause.send_replace(false);
        at(&h, 20_001).await;
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].1, vec!["a", "b"]);
    }
}
