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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{Metrics, code_name};

/// The gRPC service whose calls are measured.
const SERVICE: &str = "stormlock.v1.LockService";

/// Layer recording every LockService call; other services (health,
/// reflection) pass through untouched.
#[derive(Clone)]
pub struct RequestLayer {
    metrics: Arc<Metrics>,
    /// The service's method names, so a bogus path cannot add label values.
    methods: Arc<HashSet<String>>,
}

impl RequestLayer {
    /// A layer recording into `metrics`, for the methods the API's
    /// descriptor declares.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            methods: Arc::new(lock_service_methods()),
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
    /// The RPC label for `path`: the method name for a LockService method,
    /// `unknown` for anything else under the service, `None` for other
    /// services.
    fn rpc(&self, path: &str) -> Option<String> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        Some(if self.layer.methods.contains(method) {
            method.to_string()
        } else {
            "unknown".to_string()
        })
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
        let Some(rpc) = self.rpc(request.uri().path()) else {
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
            rpc = %rpc,
            resource = tracing::field::Empty,
            principal = tracing::field::Empty,
        );
        let metrics = self.layer.metrics.clone();
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = call.await?;
                metrics.request_answered(&rpc, started.elapsed());
                let mut recorder = Recorder {
                    metrics,
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
    metrics: Arc<Metrics>,
    rpc: String,
    started: Instant,
    span: tracing::Span,
    code: Option<tonic::Code>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.metrics.request_finished(&self.rpc, code);
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
        assert_eq!(
            service.rpc("/stormlock.v1.LockService/Acquire").as_deref(),
            Some("Acquire")
        );
        assert_eq!(
            service.rpc("/stormlock.v1.LockService/Bogus").as_deref(),
            Some("unknown")
        );
        assert_eq!(service.rpc("/grpc.health.v1.Health/Check"), None);
        assert_eq!(service.rpc("/stormlock.v1.LockServiceX/Acquire"), None);
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
