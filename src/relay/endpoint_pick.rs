//! Choice among a channel's base URLs: the fastest reachable one first, unreachable ones last.
//!
//! Each (channel, base URL) keeps a smoothed latency and a `demoted` flag. The latency is an
//! exponentially weighted moving average that blends two kinds of samples: the scheduler's
//! periodic probes and the time to first byte of real requests. Mixing them is deliberate: a
//! mirror that is quick to answer a probe but slow under real traffic drifts behind an idle
//! mirror, which then gets the traffic until its own samples catch up, so load spreads over
//! comparable mirrors instead of piling on one.
//!
//! A connect failure demotes the URL; a successful probe or request restores it. Demoted URLs
//! are still returned, last, so a channel whose every URL failed once is still tried. Octopus
//! dropped a URL whose probe failed until the next reload (inferred), which could leave a
//! channel without a URL it would try.

use std::cmp::Ordering;
use std::time::Duration;

use foldhash::HashMap;

/// Weight of a new sample in the moving average. 0.3 follows a change within a few samples
/// without letting one slow request reorder the URLs.
pub const LATENCY_SMOOTHING: f64 = 0.3;

/// What the book knows about one base URL, for the admin panel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointStatus {
    /// Smoothed latency in milliseconds; None until the first sample.
    pub latency_ms: Option<f64>,
    pub demoted: bool,
}

/// Latency and reachability of every channel's base URLs.
#[derive(Debug, Default)]
pub struct EndpointBook {
    /// Channel id, then base URL. Nested so that lookups by `&str` need no allocation.
    channels: HashMap<i64, HashMap<String, EndpointStatus>>,
}

impl EndpointBook {
    pub fn new() -> EndpointBook {
        EndpointBook::default()
    }

    /// The order in which to try `base_urls`, as positions in `base_urls`: URLs that are not
    /// demoted by ascending smoothed latency, URLs without a sample after those, demoted URLs
    /// last (ordered the same way among themselves). Ties keep their listed order.
    pub fn order_endpoints(&self, channel_id: i64, base_urls: &[String]) -> Vec<usize> {
        let channel = self.channels.get(&channel_id);
        let statuses: Vec<EndpointStatus> = base_urls
            .iter()
            .map(|url| {
                channel
                    .and_then(|channel| channel.get(url.as_str()))
                    .copied()
                    .unwrap_or(EndpointStatus {
                        latency_ms: None,
                        demoted: false,
                    })
            })
            .collect();
        let mut order: Vec<usize> = (0..base_urls.len()).collect();
        // A stable sort with a total order (`f64::total_cmp`), so ties keep the listed order
        // and the sort can never see an inconsistent comparison.
        order.sort_by(|&left, &right| compare(&statuses[left], &statuses[right]));
        order
    }

    /// A probe of `url` finished: `Some(latency)` if it got an answer, None if it could not
    /// connect (which demotes the URL like a connect failure).
    pub fn record_probe(&mut self, channel_id: i64, url: &str, latency: Option<Duration>) {
        match latency {
            Some(latency) => self.record_sample(channel_id, url, latency),
            None => self.record_connect_failure(channel_id, url),
        }
    }

    /// A request could not connect to `url` (refused, DNS failure, TLS failure, connect
    /// timeout).
    pub fn record_connect_failure(&mut self, channel_id: i64, url: &str) {
        self.status_mut(channel_id, url).demoted = true;
    }

    /// A request through `url` received its first byte after `time_to_first_byte`.
    pub fn record_first_byte(&mut self, channel_id: i64, url: &str, time_to_first_byte: Duration) {
        self.record_sample(channel_id, url, time_to_first_byte);
    }

    /// What the book knows about `url`, if anything.
    pub fn status(&self, channel_id: i64, url: &str) -> Option<EndpointStatus> {
        self.channels.get(&channel_id)?.get(url).copied()
    }

    fn record_sample(&mut self, channel_id: i64, url: &str, latency: Duration) {
        let sample_ms = latency.as_secs_f64() * 1000.0;
        let status = self.status_mut(channel_id, url);
        status.latency_ms = Some(match status.latency_ms {
            Some(average_ms) => {
                LATENCY_SMOOTHING * sample_ms + (1.0 - LATENCY_SMOOTHING) * average_ms
            }
            None => sample_ms,
        });
        status.demoted = false;
    }

    fn status_mut(&mut self, channel_id: i64, url: &str) -> &mut EndpointStatus {
        let channel = self.channels.entry(channel_id).or_default();
        if !channel.contains_key(url) {
            channel.insert(
                url.to_string(),
                EndpointStatus {
                    latency_ms: None,
                    demoted: false,
                },
            );
        }
        channel
            .get_mut(url)
            .expect("the status was inserted just above")
    }
}

fn compare(left: &EndpointStatus, right: &EndpointStatus) -> Ordering {
    left.demoted
        .cmp(&right.demoted)
        .then_with(|| match (left.latency_ms, right.latency_ms) {
            (Some(left_ms), Some(right_ms)) => left_ms.total_cmp(&right_ms),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::relay::endpoint_pick::{EndpointBook, EndpointStatus};

    const CHANNEL: i64 = 3;

    fn urls(names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|name| format!("https://{name}.example/v1"))
            .collect()
    }

    #[test]
    fn unknown_urls_keep_their_listed_order() {
        let book = EndpointBook::new();
        assert_eq!(
            book.order_endpoints(CHANNEL, &urls(&["a", "b", "c"])),
            vec![0, 1, 2]
        );
        assert!(book.order_endpoints(CHANNEL, &[]).is_empty());
    }

    #[test]
    fn known_latencies_sort_ascending_before_unknown_ones() {
        let base_urls = urls(&["a", "b", "c", "d"]);
        let mut book = EndpointBook::new();
        book.record_probe(CHANNEL, &base_urls[3], Some(Duration::from_millis(80)));
        book.record_probe(CHANNEL, &base_urls[1], Some(Duration::from_millis(200)));
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![3, 1, 0, 2]);
    }

    #[test]
    fn demoted_urls_come_last_and_a_success_restores_them() {
        let base_urls = urls(&["a", "b", "c"]);
        let mut book = EndpointBook::new();
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(10)));
        book.record_probe(CHANNEL, &base_urls[1], Some(Duration::from_millis(50)));
        book.record_connect_failure(CHANNEL, &base_urls[0]);
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![1, 2, 0]);

        book.record_first_byte(CHANNEL, &base_urls[0], Duration::from_millis(10));
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![0, 1, 2]);

        book.record_connect_failure(CHANNEL, &base_urls[0]);
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(10)));
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![0, 1, 2]);
    }

    #[test]
    fn a_failed_probe_demotes_and_keeps_the_latency() {
        let base_urls = urls(&["a", "b"]);
        let mut book = EndpointBook::new();
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(20)));
        book.record_probe(CHANNEL, &base_urls[0], None);
        assert_eq!(
            book.status(CHANNEL, &base_urls[0]),
            Some(EndpointStatus {
                latency_ms: Some(20.0),
                demoted: true
            })
        );
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![1, 0]);
    }

    #[test]
    fn every_url_demoted_still_gives_a_full_order() {
        let base_urls = urls(&["a", "b", "c"]);
        let mut book = EndpointBook::new();
        for url in &base_urls {
            book.record_connect_failure(CHANNEL, url);
        }
        book.record_probe(CHANNEL, &base_urls[2], Some(Duration::from_millis(5)));
        book.record_connect_failure(CHANNEL, &base_urls[2]);
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![2, 0, 1]);
    }

    #[test]
    fn latency_is_an_exponentially_weighted_average_of_probes_and_first_bytes() {
        let base_urls = urls(&["a"]);
        let mut book = EndpointBook::new();
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(100)));
        book.record_first_byte(CHANNEL, &base_urls[0], Duration::from_millis(200));
        // 0.3 * 200 + 0.7 * 100 = 130, then 0.3 * 30 + 0.7 * 130 = 100.
        let latency_ms = book
            .status(CHANNEL, &base_urls[0])
            .unwrap()
            .latency_ms
            .unwrap();
        assert!((latency_ms - 130.0).abs() < 1e-9, "{latency_ms}");
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(30)));
        let latency_ms = book
            .status(CHANNEL, &base_urls[0])
            .unwrap()
            .latency_ms
            .unwrap();
        assert!((latency_ms - 100.0).abs() < 1e-9, "{latency_ms}");
    }

    #[test]
    fn a_slow_mirror_under_traffic_falls_behind_an_idle_one() {
        let base_urls = urls(&["busy", "idle"]);
        let mut book = EndpointBook::new();
        book.record_probe(CHANNEL, &base_urls[0], Some(Duration::from_millis(40)));
        book.record_probe(CHANNEL, &base_urls[1], Some(Duration::from_millis(60)));
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![0, 1]);
        for _ in 0..3 {
            book.record_first_byte(CHANNEL, &base_urls[0], Duration::from_millis(900));
        }
        assert_eq!(book.order_endpoints(CHANNEL, &base_urls), vec![1, 0]);
    }

    #[test]
    fn channels_keep_separate_state_even_for_the_same_url() {
        let base_urls = urls(&["shared", "other"]);
        let mut book = EndpointBook::new();
        book.record_connect_failure(1, &base_urls[0]);
        assert_eq!(book.order_endpoints(1, &base_urls), vec![1, 0]);
        assert_eq!(book.order_endpoints(2, &base_urls), vec![0, 1]);
        assert_eq!(book.status(2, &base_urls[0]), None);
    }
}
