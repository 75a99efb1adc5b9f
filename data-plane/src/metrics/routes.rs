//! Per-route request metrics: Kong's `http_requests_total`, latency histograms and bandwidth,
//! by service and route.
//!
//! # Bounded labels
//! - `service` and `route` are the entity's name, or its id when it has none, taken from the
//!   configuration only (never from the request): one label pair per configured route, plus
//!   `service="",route=""` for requests no route matched. A route that leaves the
//!   configuration leaves `/metrics` at the first scrape after the swap.
//! - `code` is the exact status for the common ones ([`CODES`]) and the class (`4xx`) for any
//!   other: at most 40 values.
//! - `source` is `service` (the upstream answered), `gateway` (the proxy answered: no route,
//!   a protocol refusal, an upstream failure) or `exit` (a plugin answered, e.g. an
//!   authentication refusal). Kong calls `gateway` `kong`.
//!
//! - `consumer` (only with `--metrics-consumer-label on`): the consumer's username, or its id
//!   without one; `""` for requests without a consumer. Consumers that leave the
//!   configuration leave `/metrics` at the next scrape.
//!
//! A series appears once it has counted something.
//!
//! # Cost on the request path
//! The series of a runtime are built with it (a [`Part`], off the async threads): the request
//! finds its route's cells by index in the runtime's [`RuntimeSeries`] (one arc-swap load, as
//! the plugin plan) and counts with relaxed atomics. The table of status counters of a route
//! and source is allocated the first time that route answers from that source.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::histogram::Histogram;
use crate::runtime::{Part, PerRuntime, Runtime};

/// Status codes counted exactly; any other is counted under its class.
const CODES: [u16; 35] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406,
    408, 409, 410, 411, 413, 414, 415, 426, 429, 431, 494, 500, 501, 502, 503, 504,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const SLOTS: usize = CODES.len() + CLASSES.len();

/// `--metrics-consumer-label`.
static CONSUMER_LABEL: AtomicBool = AtomicBool::new(false);

/// Turns the `consumer` label on or off (at start).
pub(crate) fn consumer_label(on: bool) {
    CONSUMER_LABEL.store(on, Ordering::Relaxed);
}

/// Whether requests are counted by consumer.
pub(crate) fn wants_consumer() -> bool {
    CONSUMER_LABEL.load(Ordering::Relaxed)
}

/// The `consumer` label of a consumer: its username, else its id.
fn consumer_name(consumer: &gatehouse_shared::model::Consumer) -> String {
    consumer
        .username
        .clone()
        .unwrap_or_else(|| consumer.id.to_string())
}

/// Who wrote a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub(crate) enum Source {
    /// The upstream service.
    Service,
    /// The proxy itself.
    Gateway,
    /// A plugin.
    Exit,
}

const SOURCES: [&str; 3] = ["service", "gateway", "exit"];

/// The label values of a route's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: Arc<str>,
    route: Arc<str>,
}

/// Picks one of the histograms of [`Cells`].
type HistogramOf = fn(&Cells) -> &Histogram;

/// The counters of one route (or of the unrouted requests).
#[derive(Debug)]
pub(crate) struct Cells {
    key: Key,
    codes: [OnceLock<Box<[AtomicU64; SLOTS]>>; SOURCES.len()],
    request: Histogram,
    upstream: Histogram,
    gateway: Histogram,
    ingress: AtomicU64,
    egress: AtomicU64,
    /// With the `consumer` label: responses to requests with a consumer, by consumer, source
    /// and status slot.
    by_consumer: Mutex<HashMap<(String, Source, usize), u64>>,
}

/// The cells of one runtime, by route index, and the expiry of its served certificates.
#[derive(Debug)]
pub(crate) struct RuntimeSeries {
    routes: Vec<Arc<Cells>>,
    unrouted: Arc<Cells>,
    /// `(certificate id, SNIs, notAfter)` of every certificate of the configuration.
    pub(crate) certificates: Vec<(String, String, i64)>,
}

/// The series of the last few runtimes, and every cell alive (for the scrape).
#[derive(Default)]
pub(crate) struct RouteMetrics {
    series: PerRuntime<RuntimeSeries>,
    cells: Mutex<HashMap<Key, Arc<Cells>>>,
}

/// What the proxy learnt about a request, for its metrics.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// The consumer (only with the `consumer` label on).
    pub(crate) consumer: Option<String>,
    /// The route it matched (index in the configuration).
    pub(crate) route: Option<usize>,
    /// Who answered.
    pub(crate) source: Source,
    /// Time in the proxy before the request went upstream, and from then to the response
    /// headers, when the upstream answered.
    pub(crate) proxied: Option<(Duration, Duration)>,
}

/// The end of a request's metrics: counts the response body's bytes and, when dropped (the
/// body is done or abandoned), the request latency.
#[derive(Debug)]
pub(crate) struct Recorder {
    cells: Arc<Cells>,
    started: Instant,
    egress: u64,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            consumer: None,
            route: None,
            source: Source::Gateway,
            proxied: None,
        }
    }
}

impl Recorder {
    /// Counts the response to a request started at `started` with `ingress` body bytes;
    /// the recorder then follows the response body.
    pub(crate) fn new(
        runtime: &Runtime,
        observed: Observed,
        status: u16,
        started: Instant,
        ingress: u64,
    ) -> Self {
        let cells = super::ROUTES
            .for_runtime(runtime)
            .cells(observed.route)
            .clone();
        match observed.consumer {
            Some(consumer) => {
                *cells
                    .by_consumer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((consumer, observed.source, slot(status)))
                    .or_default() += 1;
            }
            None => cells.response(observed.source, status),
        }
        cells.ingress(ingress);
        match observed.proxied {
            Some((gateway, upstream)) => {
                cells.gateway.observe(gateway);
                cells.upstream.observe(upstream);
            }
            None => cells.gateway.observe(started.elapsed()),
        }
        Self {
            cells,
            started,
            egress: 0,
        }
    }

    /// Counts `bytes` of response body.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.egress += bytes as u64;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.cells.request.observe(self.started.elapsed());
        if self.egress > 0 {
            self.cells.egress.fetch_add(self.egress, Ordering::Relaxed);
        }
    }
}

// === impl Cells ===

impl Cells {
    fn new(key: Key) -> Self {
        Self {
            key,
            codes: Default::default(),
            request: Histogram::default(),
            upstream: Histogram::default(),
            gateway: Histogram::default(),
            ingress: AtomicU64::new(0),
            egress: AtomicU64::new(0),
            by_consumer: Mutex::default(),
        }
    }

    /// Counts one response.
    fn response(&self, source: Source, status: u16) {
        let table = self.codes[source as usize]
            .get_or_init(|| Box::new([const { AtomicU64::new(0) }; SLOTS]));
        table[slot(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Body bytes received from the client.
    fn ingress(&self, bytes: u64) {
        if bytes > 0 {
            self.ingress.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn labels(&self) -> [(&'static str, &str); 2] {
        [("service", &self.key.service), ("route", &self.key.route)]
    }
}

/// The counter slot of `status`.
fn slot(status: u16) -> usize {
    match CODES.binary_search(&status) {
        Ok(exact) => exact,
        Err(_) => CODES.len() + usize::from(status / 100).clamp(1, 5) - 1,
    }
}

/// The `code` label of a slot.
fn slot_label(slot: usize) -> std::borrow::Cow<'static, str> {
    match CODES.get(slot) {
        Some(code) => code.to_string().into(),
        None => CLASSES[slot - CODES.len()].into(),
    }
}

// === impl RuntimeSeries ===

impl RuntimeSeries {
    /// The cells of the route at `index` in the configuration; the unrouted cells for `None`.
    pub(crate) fn cells(&self, route: Option<usize>) -> &Arc<Cells> {
        route
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.unrouted)
    }
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// The series of `runtime`: prepared by the apply step, else built now.
    pub(crate) fn for_runtime(&self, runtime: &Runtime) -> Arc<RuntimeSeries> {
        self.series
            .get_or_insert_with(runtime, || self.build(runtime))
    }

    fn build(&self, runtime: &Runtime) -> RuntimeSeries {
        let config = runtime.config();
        let name_or_id = |name: &Option<String>, id: &uuid::Uuid| -> Arc<str> {
            match name {
                Some(name) => Arc::from(name.as_str()),
                None => Arc::from(id.to_string()),
            }
        };
        let services: HashMap<uuid::Uuid, Arc<str>> = config
            .services
            .iter()
            .map(|s| (s.id, name_or_id(&s.name, &s.id)))
            .collect();
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cell = |key: Key| {
            cells
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Cells::new(key)))
                .clone()
        };
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let service = route
                    .service
                    .as_ref()
                    .and_then(|s| services.get(&s.id).cloned())
                    .unwrap_or_else(|| Arc::from(""));
                cell(Key {
                    service,
                    route: name_or_id(&route.name, &route.id),
                })
            })
            .collect();
        let unrouted = cell(Key {
            service: Arc::from(""),
            route: Arc::from(""),
        });
        let certificates = config
            .certificates
            .iter()
            .filter_map(|c| {
                let compiled = runtime.certificate(&c.id)?;
                let mut snis: Vec<&str> = config
                    .snis
                    .iter()
                    .filter(|s| s.certificate.id == c.id)
                    .map(|s| s.name.as_str())
                    .collect();
                snis.sort_unstable();
                Some((c.id.to_string(), snis.join(","), compiled.not_after()))
            })
            .collect();
        RuntimeSeries {
            routes,
            unrouted,
            certificates,
        }
    }

    /// Forgets the cells no kept runtime uses any more.
    fn sweep(&self) {
        self.cells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, cells| Arc::strong_count(cells) > 1);
    }

    /// Writes the series of `current` (the running runtime): only its routes are shown.
    pub(crate) fn encode(
        &self,
        current: &Runtime,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        self.sweep();
        let series = self.for_runtime(current);
        let mut all: Vec<&Arc<Cells>> = series.routes.iter().collect();
        all.push(&series.unrouted);
        all.sort_by(|a, b| {
            a.key
                .service
                .cmp(&b.key.service)
                .then(a.key.route.cmp(&b.key.route))
        });
        all.dedup_by(|a, b| Arc::ptr_eq(a, b));

        let mut family = encoder.encode_descriptor(
            "gatehouse_http_requests",
            "Responses by service, route, status code and source (service, gateway, exit).",
            None,
            MetricType::Counter,
        )?;
        let by_consumer = wants_consumer();
        let consumers: std::collections::HashSet<String> = if by_consumer {
            current
                .config()
                .consumers
                .iter()
                .map(consumer_name)
                .collect()
        } else {
            Default::default()
        };
        for cells in &all {
            let [service, route] = cells.labels();
            for (source, table) in SOURCES.iter().zip(&cells.codes) {
                let Some(table) = table.get() else { continue };
                for (slot, count) in table.iter().enumerate() {
                    let count = count.load(Ordering::Relaxed);
                    if count == 0 {
                        continue;
                    }
                    let code = slot_label(slot);
                    let mut labels = vec![service, route, ("code", &code), ("source", source)];
                    if by_consumer {
                        labels.push(("consumer", ""));
                    }
                    family
                        .encode_family(&labels)?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &count, None,
                        )?;
                }
            }
            let mut counted = cells
                .by_consumer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            counted.retain(|(consumer, _, _), _| consumers.contains(consumer));
            let mut rows: Vec<_> = counted.iter().map(|(k, v)| (k.clone(), *v)).collect();
            drop(counted);
            rows.sort_unstable_by(|a, b| a.0.0.cmp(&b.0.0).then(a.0.2.cmp(&b.0.2)));
            for ((consumer, source, slot), count) in rows {
                let code = slot_label(slot);
                let labels = [
                    service,
                    route,
                    ("code", &code),
                    ("source", SOURCES[source as usize]),
                    ("consumer", &consumer),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &count, None,
                    )?;
            }
        }
        let histograms: [(&str, &str, HistogramOf); 3] = [
            (
                "gatehouse_request_latency_ms",
                "Time from the request to the end of the response body, by service and route.",
                |c| &c.request,
            ),
            (
                "gatehouse_upstream_latency_ms",
                "Time from sending the request upstream to its response headers.",
                |c| &c.upstream,
            ),
            (
                "gatehouse_gateway_latency_ms",
                "Time spent in the gateway before the request went upstream (or until its own answer); Kong's kong_latency_ms.",
                |c| &c.gateway,
            ),
        ];
        for (name, help, histogram_of) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for cells in &all {
                let histogram = histogram_of(cells);
                if histogram.count() > 0 {
                    histogram.encode(family.encode_family(&cells.labels())?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "gatehouse_bandwidth_bytes",
            "Body bytes by direction (ingress: from clients; egress: to clients), service and route.",
            None,
            MetricType::Counter,
        )?;
        for cells in &all {
            for (direction, value) in [("ingress", &cells.ingress), ("egress", &cells.egress)] {
                let value = value.load(Ordering::Relaxed);
                if value > 0 {
                    let [service, route] = cells.labels();
                    family
                        .encode_family(&[("direction", direction), service, route])?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &value, None,
                        )?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "gatehouse_certificate_expiry_timestamp_seconds",
            "notAfter of each certificate this data plane serves, Unix seconds.",
            None,
            MetricType::Gauge,
        )?;
        for (id, snis, not_after) in &series.certificates {
            family
                .encode_family(&[("certificate", id.as_str()), ("snis", snis.as_str())])?
                .encode_gauge(not_after)?;
        }
        Ok(())
    }
}

impl Part for RouteMetrics {
    fn prepare(&self, runtime: &Arc<Runtime>, _warnings: &mut Vec<String>) -> Result<(), String> {
        let series = self.build(runtime);
        self.series.insert(runtime, Arc::new(series));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::test_support::valid_config;

    /// The route series of one runtime (the process's [`super::super::ROUTES`]).
    #[derive(Debug)]
    struct Series(Arc<Runtime>);

    impl Collector for Series {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            super::super::ROUTES.encode(&self.0, &mut encoder)
        }
    }

    fn render(runtime: &Arc<Runtime>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Series(runtime.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn requests_count_by_route_and_consumer_and_unknown_consumers_are_dropped() {
        consumer_label(true);
        let runtime = Arc::new(Runtime::compile(3, "h".into(), valid_config()).unwrap());
        let started = Instant::now();
        let answer = |consumer: Option<&str>, route: Option<usize>, source, status| {
            let observed = Observed {
                consumer: consumer.map(str::to_owned),
                route,
                source,
                proxied: Some((Duration::from_millis(1), Duration::from_millis(4))),
            };
            let mut recorder = Recorder::new(&runtime, observed, status, started, 7);
            recorder.sent(11);
        };
        answer(Some("alice"), Some(0), Source::Service, 200);
        answer(Some("alice"), Some(0), Source::Service, 200);
        answer(Some("mallory"), Some(0), Source::Service, 200);
        answer(None, Some(0), Source::Exit, 401);
        answer(None, None, Source::Gateway, 404);
        let text = render(&runtime);
        for line in [
            "gatehouse_http_requests_total{service=\"svc\",route=\"r\",code=\"200\",source=\"service\",consumer=\"alice\"} 2",
            "gatehouse_http_requests_total{service=\"svc\",route=\"r\",code=\"401\",source=\"exit\",consumer=\"\"} 1",
            "gatehouse_http_requests_total{service=\"\",route=\"\",code=\"404\",source=\"gateway\",consumer=\"\"} 1",
            "gatehouse_request_latency_ms_count{service=\"svc\",route=\"r\"} 4",
            "gatehouse_upstream_latency_ms_bucket{le=\"5.0\",service=\"svc\",route=\"r\"} 4",
            "gatehouse_bandwidth_bytes_total{direction=\"egress\",service=\"svc\",route=\"r\"} 44",
            "gatehouse_bandwidth_bytes_total{direction=\"ingress\",service=\"svc\",route=\"r\"} 28",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("mallory"),
            "not a consumer of the configuration: {text}"
        );
        assert!(
            text.contains("gatehouse_certificate_expiry_timestamp_seconds{certificate="),
            "{text}"
        );

        // A runtime without the route: its series are gone from the next scrape.
        let mut config = valid_config();
        config.routes.clear();
        config.plugins.retain(|p| p.route.is_none());
        let emptied = Arc::new(Runtime::compile(4, "h2".into(), config).unwrap());
        let text = render(&emptied);
        assert!(!text.contains("route=\"r\""), "{text}");
    }

    #[test]
    fn common_codes_are_exact_and_others_their_class() {
        assert_eq!(slot_label(slot(200)), "200");
        assert_eq!(slot_label(slot(504)), "504");
        assert_eq!(slot_label(slot(418)), "4xx");
        assert_eq!(slot_label(slot(599)), "5xx");
        assert_eq!(slot_label(slot(103)), "1xx");
        assert_eq!(slot_label(slot(0)), "1xx");
        assert_eq!(slot_label(slot(999)), "5xx");
    }
}
