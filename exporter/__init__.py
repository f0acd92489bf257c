"""certpager exporter: probes TLS endpoints and exposes their whole chain as Prometheus metrics."""
