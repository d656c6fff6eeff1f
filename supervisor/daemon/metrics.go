package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pluginv1 "corral.dev/proto/plugin/v1"
	"corral.dev/supervisor/host"
)

// pluginMetricsTimeout bounds how long a scrape waits for one plugin.
const pluginMetricsTimeout = 2 * time.Second

// metrics holds the supervisor's own collectors: the Go runtime, the process,
// every call on the public socket, and each plugin's state.
type metrics struct {
	reg     *prometheus.Registry
	handled *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newMetrics(h *host.Host) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Calls completed on the public socket, by method and status code.",
		}, []string{"grpc_service", "grpc_method", "grpc_code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Time from the start to the end of calls on the public socket.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30},
		}, []string{"grpc_service", "grpc_method"}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.handled, m.latency,
		pluginStateCollector{h},
	)
	return m
}

func (m *metrics) observe(method string, start time.Time, err error) {
	svc, name := splitMethod(method)
	m.handled.WithLabelValues(svc, name, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(svc, name).Observe(time.Since(start).Seconds())
}

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *metrics) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}

func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

// gatherer returns everything /v1/metrics serves: the supervisor's own
// families and every plugin's, the latter labelled plugin="<id>".
func (m *metrics) gatherer(h *host.Host) prometheus.Gatherer {
	return prometheus.Gatherers{m.reg, pluginGatherer{h}}
}

var (
	pluginUpDesc = prometheus.NewDesc("corral_plugin_up",
		"Whether the plugin process is running and serving (1) or not (0).", []string{"plugin"}, nil)
	pluginRestartsDesc = prometheus.NewDesc("corral_plugin_restarts_total",
		"Times the plugin process exited unexpectedly and was started again.", []string{"plugin"}, nil)
	pluginStateDesc = prometheus.NewDesc("corral_plugin_state",
		"The plugin's state: 1 for the state it is in, 0 for the others.", []string{"plugin", "state"}, nil)
)

var allStates = []host.State{host.Starting, host.Running, host.Restarting, host.Failed, host.Stopped}

// pluginStateCollector reports what the supervisor knows of each plugin.
type pluginStateCollector struct {
	h *host.Host
}

func (c pluginStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pluginUpDesc
	ch <- pluginRestartsDesc
	ch <- pluginStateDesc
}

func (c pluginStateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, in := range c.h.Instances() {
		st := in.Status()
		up := 0.0
		if st.State == host.Running {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(pluginUpDesc, prometheus.GaugeValue, up, st.ID)
		ch <- prometheus.MustNewConstMetric(pluginRestartsDesc, prometheus.CounterValue, float64(st.Restarts), st.ID)
		for _, s := range allStates {
			v := 0.0
			if s == st.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(pluginStateDesc, prometheus.GaugeValue, v, st.ID, string(s))
		}
	}
}

// pluginGatherer asks every running plugin for its families, in parallel.
type pluginGatherer struct {
	h *host.Host
}

func (g pluginGatherer) Gather() ([]*dto.MetricFamily, error) {
	instances := g.h.Instances()
	results := make([][]*dto.MetricFamily, len(instances))
	errs := make([]error, len(instances))
	var wg sync.WaitGroup
	for i, in := range instances {
		st := in.Status()
		if st.State != host.Running || st.Conn == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = gatherPlugin(st)
		}()
	}
	wg.Wait()

	var all []*dto.MetricFamily
	for _, r := range results {
		all = append(all, r...)
	}
	return all, errors.Join(errs...)
}

func gatherPlugin(st host.Status) ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), pluginMetricsTimeout)
	defer cancel()
	resp, err := pluginv1.NewPluginClient(st.Conn).Metrics(ctx, &pluginv1.MetricsRequest{})
	if err != nil {
		return nil, err
	}
	dec := expfmt.NewDecoder(bytes.NewReader(resp.Families), expfmt.NewFormat(expfmt.TypeProtoDelim))
	var out []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		for _, m := range mf.Metric {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String("plugin"), Value: proto.String(st.ID)})
			sort.Slice(m.Label, func(i, j int) bool { return m.Label[i].GetName() < m.Label[j].GetName() })
		}
		out = append(out, mf)
	}
}
