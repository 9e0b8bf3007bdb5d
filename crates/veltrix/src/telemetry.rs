//! Logging and (with the `otel` feature) OpenTelemetry span export.
//!
//! Logs: `tracing` to stderr, text or JSON, filtered by `--log-level`/`VELTRIX_LOG`. Spans: the
//! engine opens one span per event when it is accepted (`veltrix.ingest`) and when its sink
//! confirms it (`veltrix.deliver`), both with `event.id`, on the target `veltrix::event` at
//! TRACE level. Only the OTLP layer enables that target, and only when an endpoint is given, so
//! without it the per-event spans cost a disabled-callsite check.

use crate::cli::LogFormat;

/// Keeps span export alive; flushes pending spans when dropped.
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("veltrix: flushing OpenTelemetry spans failed: {e}");
        }
    }
}

/// Installs the global subscriber. `otlp_endpoint` is the collector's base URL (spans go to
/// `<endpoint>/v1/traces`).
pub(crate) fn init(
    filter: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level / VELTRIX_LOG `{filter}`: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter);
    let registry = tracing_subscriber::registry().with(fmt);

    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig;
        let mut provider = None;
        let otel = match otlp_endpoint {
            None => None,
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build()
                    .map_err(|e| format!("OpenTelemetry exporter for {endpoint}: {e}"))?;
                let resource = opentelemetry_sdk::Resource::builder()
                    .with_service_name("veltrix")
                    .build();
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build();
                let tracer = p.tracer("veltrix");
                provider = Some(p);
                let targets = tracing_subscriber::filter::Targets::new()
                    .with_target("veltrix::event", tracing::Level::TRACE);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(targets),
                )
            }
        };
        registry.with(otel).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        if let Some(endpoint) = otlp_endpoint {
            return Err(format!(
                "--otlp-endpoint {endpoint}: this veltrix was built without OpenTelemetry; build it with `cargo build --release --features otel`"
            ));
        }
        registry.init();
        Ok(Telemetry {})
    }
}
