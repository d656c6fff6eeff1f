package service

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the service's own collectors.
type metrics struct {
	written prometheus.Counter
	read    prometheus.Counter
	commits prometheus.Counter
	writers prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "corral_content_written_bytes_total",
			Help: "Bytes written to ingests.",
		}),
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "corral_content_read_bytes_total",
			Help: "Bytes of blobs sent to readers.",
		}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "corral_content_commits_total",
			Help: "Ingests committed as blobs.",
		}),
		writers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "corral_content_writers",
			Help: "Write streams holding an ingest.",
		}),
	}
}

// RegisterMetrics registers the service's collectors on r.
func (c *Content) RegisterMetrics(r prometheus.Registerer) error {
	m := c.metrics
	for _, col := range []prometheus.Collector{m.written, m.read, m.commits, m.writers} {
		if err := r.Register(col); err != nil {
			return fmt.Errorf("register content metrics: %w", err)
		}
	}
	return nil
}
