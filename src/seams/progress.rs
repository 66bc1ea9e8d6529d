//! Progress of long runs: bytes, rate, elapsed and (when the size is known) time remaining.
//! A bar on a terminal (indicatif), log lines at a steady interval otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Log { every: Duration },
    Off,
}

impl Mode {
    /// A bar when stderr is a terminal, log lines every 10 s otherwise.
    pub fn auto() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() { Mode::Bar } else { Mode::Log { every: Duration::from_secs(10) } }
    }
}

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    bytes: AtomicU64,
    total: Option<u64>,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    pub fn start(mode: Mode, label: impl Into<String>, total: Option<u64>) -> Self {
        let label = label.into();
        let bar = (mode == Mode::Bar).then(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{msg} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}"
            };
            bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let inner = Arc::new(Inner {
            label,
            bytes: AtomicU64::new(0),
            total,
            started: Instant::now(),
            bar,
            ticker: Mutex::new(None),
        });
        if let (Mode::Log { every }, Ok(handle)) = (mode, tokio::runtime::Handle::try_current()) {
            // The ticker holds a weak reference, so it ends when the last Progress is dropped.
            let weak = Arc::downgrade(&inner);
            let task = handle.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    tracing::info!(target: "pgvault::seams::progress", "{}", inner.line());
                }
            });
            *inner.ticker.lock().expect("not poisoned") = Some(task);
        }
        Progress { inner }
    }

    pub fn add(&self, n: u64) {
        self.inner.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.inc(n);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Stop the bar or ticker and log the final line.
    pub fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
        if let Some(t) = self.inner.ticker.lock().expect("not poisoned").take() {
            t.abort();
        }
        tracing::info!(target: "pgvault::seams::progress", "{} (done)", self.inner.line());
    }
}

impl Inner {
    fn line(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / elapsed;
        let mut line =
            format!("{}: {} in {:.0} s ({}/s)", self.label, human_bytes(bytes), elapsed, human_bytes(rate as u64));
        if let Some(total) = self.total
            && rate > 0.0
            && total > bytes
        {
            line.push_str(&format!(", about {:.0} s remaining", (total - bytes) as f64 / rate));
        }
        line
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.lock().expect("not poisoned").take() {
            t.abort();
        }
    }
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[tokio::test(start_paused = true)]
    async fn logs_at_a_steady_interval() {
        let p = Progress::start(Mode::Log { every: Duration::from_secs(10) }, "backup x", Some(100));
        p.add(40);
        assert_eq!(p.bytes(), 40);
        assert!(p.inner.line().contains("backup x: 40 B"));
        p.finish();
    }
}
