//! Per-request telemetry: a tower layer around the gRPC server that opens
//! one `tracing` span per LockService call (RPC, then resource and principal
//! once the service knows them; never a lease id) and records the call in
//! [`Metrics`]: its latency when the response headers leave, its gRPC status
//! once known.
//!
//! A unary error travels as a "trailers-only" response (`grpc-status` in
//! the headers); a success carries its status in the trailers after the
//! message. A response body dropped before its trailers (the client went
//! away) counts as `CANCELLED`.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

use crate::metrics::{Metrics, RpcMetrics, code_name};

/// The gRPC service whose calls are measured.
const SERVICE: &str = "stormlock.v1.LockService";

/// Layer recording every LockService call; other services (health,
/// reflection) pass through untouched.
#[derive(Clone)]
pub struct RequestLayer {
    /// The recorders of the service's methods, resolved once, so a bogus
    /// path cannot add label values and a call looks no label up.
    methods: Arc<[Arc<RpcMetrics>]>,
    /// The recorder of paths under the service that name no method.
    unknown: Arc<RpcMetrics>,
}

impl RequestLayer {
    /// A layer recording into `metrics`, for the methods the API's
    /// descriptor declares.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let mut methods: Vec<String> = lock_service_methods().into_iter().collect();
        methods.sort();
        Self {
            methods: methods
                .iter()
                .map(|method| Arc::new(metrics.rpc(method)))
                .collect(),
            unknown: Arc::new(metrics.rpc("unknown")),
        }
    }
}

/// The method names of `stormlock.v1.LockService`, from the compiled-in
/// descriptor set (empty if it does not decode, which a unit test rules out).
fn lock_service_methods() -> HashSet<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    set.file
        .iter()
        .filter(|f| f.package() == "stormlock.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "LockService")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_string())
        .collect()
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`RequestLayer`].
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    layer: RequestLayer,
}

impl<S> RequestService<S> {
    /// The recorder for `path`: the method's for a LockService method,
    /// `unknown` for anything else under the service, `None` for other
    /// services.
    fn rpc(&self, path: &str) -> Option<&Arc<RpcMetrics>> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        // A dozen names: a scan beats hashing the path.
        Some(
            self.layer
                .methods
                .iter()
                .find(|rpc| rpc.name() == method)
                .unwrap_or(&self.layer.unknown),
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<RecordedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(rpc) = self.rpc(request.uri().path()).cloned() else {
            let call = self.inner.call(request);
            return Box::pin(async move {
                let response = call.await?;
                Ok(response.map(|body| RecordedBody {
                    inner: body,
                    recorder: None,
                }))
            });
        };
        let span = tracing::info_span!(
            "request",
            rpc = rpc.name(),
            resource = tracing::field::Empty,
            principal = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = call.await?;
                rpc.answered(started.elapsed());
                let mut recorder = Recorder {
                    rpc,
                    started,
                    span: tracing::Span::current(),
                    code: None,
                };
                if let Some(code) = grpc_status(response.headers()) {
                    recorder.code = Some(code);
                    drop(recorder);
                    return Ok(response.map(|body| RecordedBody {
                        inner: body,
                        recorder: None,
                    }));
                }
                Ok(response.map(|body| RecordedBody {
                    inner: body,
                    recorder: Some(recorder),
                }))
            }
            .instrument(span),
        )
    }
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// Records a call when dropped: with the status seen, else `CANCELLED`.
struct Recorder {
    rpc: Arc<RpcMetrics>,
    started: Instant,
    span: tracing::Span,
    code: Option<tonic::Code>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.rpc.finished(code);
        let _entered = self.span.enter();
        tracing::debug!(
            code = code_name(code),
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3,
            "finished"
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when its trailers pass (or
    /// when it is dropped before).
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(mut recorder) = this.recorder.take()
        {
            recorder.code = Some(grpc_status(trailers).unwrap_or(tonic::Code::Unknown));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fields as tracing-subscriber's `DefaultFields` writes them (the same
/// text), but a field whose value is a plain string (printable ASCII, no
/// quote or backslash) is written as it is rather than through
/// `fmt::Debug`: each call's span records its `rpc`, `resource` and
/// `principal`, and formatting them was a tenth of a call's CPU. With
/// colours (a terminal), everything goes through `DefaultFields`.
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet (so no separating space).
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes one field as `DefaultFields` does.
    fn as_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // The `log` crate's metadata, which the formatter shows elsewhere.
        if name.starts_with("log.") {
            return;
        }
        // What `{:?}` of a `str` writes between its quotes unchanged.
        let plain = value
            .bytes()
            .all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\');
        if !plain || name == "message" || name.starts_with("r#") {
            return self.as_default(|v| v.record_str(field, value));
        }
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        // Plain `write_str`s: `write!` would go through the formatting
        // machinery this exists to skip.
        self.result = [separator, name, "=\"", value, "\""]
            .into_iter()
            .try_for_each(|part| self.writer.write_str(part));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.as_default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.as_default(|v| v.record_debug(field, value));
        }
    }
}

/// The log filter of `directives`: a bare level (`debug`, `trace`) applies
/// to the daemon, its libraries staying at `info` or quieter, since their
/// debug output (HTTP/2 frames, TLS) drowns the daemon's; a full filter
/// (`h2=debug,info`) is used as given.
pub fn log_filter(directives: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::try_new(expand_level(directives)).map_err(|e| e.to_string())
}

fn expand_level(directives: &str) -> String {
    use tracing_subscriber::filter::LevelFilter;
    match directives.trim().parse::<LevelFilter>() {
        Ok(level) => format!("{},stormlock={level}", level.min(LevelFilter::INFO)),
        Err(_) => directives.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lock_service_method_is_known() {
        let methods = lock_service_methods();
        for method in [
            "Acquire",
            "Release",
            "Renew",
            "Current",
            "IsHeld",
            "List",
            "ForceRelease",
        ] {
            assert!(methods.contains(method), "{method} in {methods:?}");
        }
    }

    #[test]
    fn rpc_labels_are_bounded() {
        let service = RequestLayer::new(Arc::new(Metrics::new())).layer(());
        let rpc = |path| service.rpc(path).map(|rpc| rpc.name().to_string());
        assert_eq!(
            rpc("/stormlock.v1.LockService/Acquire").as_deref(),
            Some("Acquire")
        );
        assert_eq!(
            rpc("/stormlock.v1.LockService/Bogus").as_deref(),
            Some("unknown")
        );
        assert_eq!(
            rpc("/stormlock.v1.LockService/acquire").as_deref(),
            Some("unknown")
        );
        assert_eq!(rpc("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc("/stormlock.v1.LockServiceX/Acquire"), None);
    }

    /// Writes whatever it is given into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log a subscriber formatting fields with `fields` writes for
    /// spans and events with fields of every kind.
    fn logged_with<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                rpc = "Acquire",
                resource = tracing::field::Empty,
                principal = tracing::field::Empty,
            );
            span.record("principal", "alice@example.com")
                .record("resource", "deploy/prod");
            let _request = span.enter();
            tracing::info!(
                count = 3,
                ok = true,
                plain = "words and/paths-1.2",
                odd = "quote \" backslash \\ tab \t é \u{202e}",
                empty = "",
                "a message with \"quotes\""
            );
            let inner = tracing::info_span!("inner", backend = "main", detail = ?Some(2));
            let _inner = inner.enter();
            tracing::warn!(error = %"no answer", "second");
            let error = std::io::Error::other("disk full");
            tracing::error!(error = &error as &dyn std::error::Error, "third");
        });
        let bytes = buffer
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn plain_fields_write_what_the_default_writes() {
        let plain = logged_with(PlainFields);
        assert_eq!(plain, logged_with(DefaultFields::new()));
        // Not two empty logs: the span's fields and every event are there.
        assert!(
            plain.contains(
                r#"request{rpc="Acquire" principal="alice@example.com" resource="deploy/prod"}"#
            ),
            "{plain}"
        );
        assert_eq!(plain.lines().count(), 3, "{plain}");
    }

    #[test]
    fn a_bare_level_is_the_daemons() {
        assert_eq!(expand_level("debug"), "info,stormlock=debug");
        assert_eq!(expand_level("warn"), "warn,stormlock=warn");
        assert_eq!(expand_level("h2=debug,info"), "h2=debug,info");
        assert!(log_filter("stormlock=debug,h2=info").is_ok());
        assert!(log_filter("stormlock=loud").is_err());
    }
}
