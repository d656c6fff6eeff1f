//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"corral.dev/pluginkit/testkit"
)

// scrape gets /v1/metrics from addr and parses the text format.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	families, _ := scrapeRaw(t, addr)
	return families
}

// scrapeRaw gets /v1/metrics from addr and returns it parsed and as text.
func scrapeRaw(t *testing.T, addr string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr + "/v1/metrics")
	if err != nil {
		t.Fatalf("get metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get metrics: %s\n%s", resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse metrics: %v\n%s", err, body)
	}
	return families, body
}

// labelsOf returns a metric's labels as a map.
func labelsOf(m *dto.Metric) map[string]string {
	labels := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	return labels
}

// pluginSeries returns the metrics of family name labelled plugin=id.
func pluginSeries(families map[string]*dto.MetricFamily, name, id string) []*dto.Metric {
	var ms []*dto.Metric
	for _, m := range families[name].GetMetric() {
		if labelsOf(m)["plugin"] == id {
			ms = append(ms, m)
		}
	}
	return ms
}

// metricValue returns the value of the one series of counter or gauge name
// labelled plugin=id, failing t when there is not exactly one.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, name, id string) float64 {
	t.Helper()
	ms := pluginSeries(families, name, id)
	if len(ms) != 1 {
		t.Fatalf("%s{plugin=%q}: %d series, want 1", name, id, len(ms))
	}
	switch m := ms[0]; {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("%s{plugin=%q} is neither a counter nor a gauge", name, id)
	return 0
}

// TestMetrics scrapes /v1/metrics: it parses with expfmt, promlint finds
// nothing, and it holds the supervisor's own families and those of every
// plugin, bolt among them.
func TestMetrics(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	d.runningPlugin(t, boltID)
	// One call on the public socket, so that the gRPC families have series.
	mustRun(t, "/usr/bin/ctr", "--address", d.Socket, "namespaces", "ls")

	families, body := scrapeRaw(t, d.MetricsAddr)
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// The supervisor's own families, without a plugin label.
	for _, name := range []string{
		"go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total",
		"grpc_server_handled_total", "grpc_server_handling_seconds",
	} {
		if !slices.ContainsFunc(families[name].GetMetric(), func(m *dto.Metric) bool {
			_, ok := labelsOf(m)["plugin"]
			return !ok
		}) {
			t.Errorf("no %s series of the supervisor (without a plugin label)", name)
		}
	}

	// Every plugin's own families, labelled with its id, and its state.
	for id, p := range d.plugins(t) {
		for _, name := range []string{
			"go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total",
		} {
			if len(pluginSeries(families, name, id)) == 0 {
				t.Errorf("no %s{plugin=%q} series", name, id)
			}
		}
		if v := metricValue(t, families, "process_resident_memory_bytes", id); v <= 0 {
			t.Errorf("process_resident_memory_bytes{plugin=%q} = %v, want > 0", id, v)
		}
		if v := metricValue(t, families, "corral_plugin_up", id); v != 1 {
			t.Errorf("corral_plugin_up{plugin=%q} = %v, want 1 (%s)", id, v, p.State)
		}
		if v := metricValue(t, families, "corral_plugin_restarts_total", id); v != 0 {
			t.Errorf("corral_plugin_restarts_total{plugin=%q} = %v, want 0", id, v)
		}
	}
	if len(pluginSeries(families, "process_cpu_seconds_total", boltID)) == 0 {
		t.Errorf("no process_cpu_seconds_total{plugin=%q} series", boltID)
	}
	// By default a plugin runs Go code on one thread per four CPUs.
	want := float64(max(1, runtime.NumCPU()/4))
	if v := metricValue(t, families, "go_sched_gomaxprocs_threads", boltID); v != want {
		t.Errorf("go_sched_gomaxprocs_threads{plugin=%q} = %v, want %v", boltID, v, want)
	}
	// By default every process keeps the runtime's monitor thread out of
	// deep sleep (package gotune).
	checkSysmonAwake(t, d, true)
}

// checkSysmonAwake checks that the daemon's processes run with the GODEBUG
// that keeps the runtime monitor awake, or without it.
func checkSysmonAwake(t *testing.T, d *daemon, awake bool) {
	t.Helper()
	pids := []int{d.Pid}
	for _, p := range d.plugins(t) {
		pids = append(pids, p.Pid)
	}
	for _, pid := range pids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		var has bool
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				has = slices.Contains(strings.Split(v, ","), "schedtrace=2147483647")
			}
		}
		if has != awake {
			t.Errorf("process %d: GODEBUG=schedtrace=2147483647 in its environment is %v, want %v", pid, has, awake)
		}
	}
}

// TestPluginProcs: [plugin_host] plugin_procs sets every plugin's
// GOMAXPROCS, and the supervisor keeps its own; sysmon_awake = false leaves
// the runtime monitor's GODEBUG alone.
func TestPluginProcs(t *testing.T) {
	testkit.RequiresRoot(t)
	// On all CPUs the supervisor's runtime keeps the GOMAXPROCS it started
	// with, which TestCPUAffinity checks under the other settings.
	d := startDaemon(t, settings{PluginProcs: 3, ParkSysmon: true, CPUAffinity: "all"})
	d.runningPlugin(t, boltID)
	checkSysmonAwake(t, d, false)
	families := scrape(t, d.MetricsAddr)
	for id := range d.plugins(t) {
		if v := metricValue(t, families, "go_sched_gomaxprocs_threads", id); v != 3 {
			t.Errorf("go_sched_gomaxprocs_threads{plugin=%q} = %v, want 3", id, v)
		}
	}
	for _, m := range families["go_sched_gomaxprocs_threads"].GetMetric() {
		if _, ok := labelsOf(m)["plugin"]; !ok && m.GetGauge().GetValue() != float64(runtime.GOMAXPROCS(0)) {
			t.Errorf("the supervisor's go_sched_gomaxprocs_threads = %v, want %d",
				m.GetGauge().GetValue(), runtime.GOMAXPROCS(0))
		}
	}
}
