// Package sidebyside runs the same workloads against our daemon and
// Debian's containerd 1.6.20, each on its own temporary root and socket,
// and reports every figure next to the other with the ratio ours/theirs.
package sidebyside

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// Config sets what Run starts and how many calls each workload makes.
type Config struct {
	// Binary is our containerd multi-call binary; Run builds one from the
	// workspace when it is empty.
	Binary string
	// Containerd is the reference daemon, by default [ContainerdPath].
	Containerd string
	// Ctr is the ctr 1.6 binary timed by the ctr workload.
	Ctr string
	// Ctr2 is an optional ctr 2.x binary timed the same way.
	Ctr2 string
	// CtrRuns is how many times each ctr command runs.
	CtrRuns int
	// Warmup is how many unmeasured calls precede each sequential run.
	Warmup int
	// Calls is how many sequential calls are measured for latency.
	Calls int
	// Workers is how many goroutines make the parallel calls.
	Workers int
	// ParallelCalls is how many calls the parallel run makes in total.
	ParallelCalls int
}

// DefaultConfig is the full run recorded in README.md.
func DefaultConfig() Config {
	return Config{
		Containerd:    ContainerdPath,
		Ctr:           "/usr/bin/ctr",
		CtrRuns:       30,
		Warmup:        500,
		Calls:         5000,
		Workers:       16,
		ParallelCalls: 20000,
	}
}

// Quick returns c with the small counts of a smoke run, which proves the
// harness works in seconds.
func Quick(c Config) Config {
	c.CtrRuns, c.Warmup, c.Calls, c.ParallelCalls = 3, 20, 200, 1000
	return c
}

// AddFlags registers a flag for every field of c, with c's values as the
// defaults.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Binary, "binary", c.Binary, "our containerd binary (default: build from the workspace)")
	fs.StringVar(&c.Containerd, "containerd", c.Containerd, "reference containerd binary")
	fs.StringVar(&c.Ctr, "ctr", c.Ctr, "ctr 1.6 binary")
	fs.StringVar(&c.Ctr2, "ctr2", c.Ctr2, "ctr 2.x binary, skipped when empty")
	fs.IntVar(&c.CtrRuns, "ctr-runs", c.CtrRuns, "runs of each ctr command")
	fs.IntVar(&c.Warmup, "warmup", c.Warmup, "unmeasured calls before each workload")
	fs.IntVar(&c.Calls, "calls", c.Calls, "sequential calls per workload")
	fs.IntVar(&c.Workers, "workers", c.Workers, "goroutines of the parallel run")
	fs.IntVar(&c.ParallelCalls, "parallel-calls", c.ParallelCalls, "calls of the parallel run")
}

// side is one daemon under test with its Go client.
type side struct {
	daemon *Daemon
	client *client.Client
}

// Run starts both daemons, runs every workload against each and returns
// the figures. Both daemons are stopped and their directories removed
// before it returns.
func Run(ctx context.Context, cfg Config) (report *Report, err error) {
	if cfg.Binary == "" {
		dir, err := os.MkdirTemp("", "cbbuild")
		if err != nil {
			return nil, fmt.Errorf("create build directory: %w", err)
		}
		defer os.RemoveAll(dir)
		if cfg.Binary, err = BuildOurs(ctx, dir); err != nil {
			return nil, err
		}
	}

	// Start both daemons; they idle while the other is measured.
	ours, err := startSide(ctx, func() (*Daemon, error) { return StartOurs(ctx, cfg.Binary) })
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ours.close()) }()
	theirs, err := startSide(ctx, func() (*Daemon, error) { return StartContainerd(ctx, cfg.Containerd) })
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, theirs.close()) }()

	report = &Report{Config: cfg}
	if err := report.ctr(ctx, cfg, ours, theirs); err != nil {
		return nil, err
	}
	for _, w := range workloads {
		if err := report.calls(ctx, cfg, w, ours, theirs); err != nil {
			return nil, err
		}
	}
	return report, nil
}

// startSide starts a daemon and connects a Go client to it.
func startSide(ctx context.Context, start func() (*Daemon, error)) (*side, error) {
	d, err := start()
	if err != nil {
		return nil, err
	}
	c, err := client.New(d.Address, client.WithDefaultNamespace("default"))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("connect to %s: %w", d.Name, err), d.Stop())
	}
	return &side{daemon: d, client: c}, nil
}

func (s *side) close() error {
	return errors.Join(s.client.Close(), s.daemon.Stop())
}

// workload is a Go client round trip measured on both sides.
type workload struct {
	name string
	call func(c *client.Client) Call
}

// workloads are the Go client round trips, in the order they run.
var workloads = []workload{
	{"Version", func(c *client.Client) Call {
		return func(ctx context.Context) error {
			_, err := c.Version(ctx)
			return err
		}
	}},
	{"Namespaces.List", func(c *client.Client) Call {
		return func(ctx context.Context) error {
			_, err := c.NamespaceService().List(ctx)
			return err
		}
	}},
}

// ctr times the ctr commands on both sides.
func (r *Report) ctr(ctx context.Context, cfg Config, ours, theirs *side) error {
	ctrs := []struct{ label, path string }{{"ctr 1.6 version", cfg.Ctr}}
	if cfg.Ctr2 != "" {
		ctrs = append(ctrs, struct{ label, path string }{"ctr 2.x version", cfg.Ctr2})
	}
	for _, c := range ctrs {
		var wall [2]time.Duration
		for i, s := range []*side{ours, theirs} {
			d, err := CtrVersion(ctx, c.path, s.daemon.Address, cfg.CtrRuns)
			if err != nil {
				return err
			}
			wall[i] = d
		}
		r.add(c.label+", median wall time", micros(wall[0]), micros(wall[1]), "µs", lower)
	}
	return nil
}

// calls measures one workload's latency, throughput and CPU on both sides.
func (r *Report) calls(ctx context.Context, cfg Config, w workload, ours, theirs *side) error {
	var m [2]measurement
	for i, s := range []*side{ours, theirs} {
		var err error
		if m[i], err = measure(ctx, cfg, s, w.call(s.client)); err != nil {
			return fmt.Errorf("%s on %s: %w", w.name, s.daemon.Name, err)
		}
	}
	r.add(w.name+", sequential median", micros(m[0].lat.Median), micros(m[1].lat.Median), "µs", lower)
	r.add(w.name+", sequential p99", micros(m[0].lat.P99), micros(m[1].lat.P99), "µs", lower)
	r.add(fmt.Sprintf("%s, %d-way throughput", w.name, cfg.Workers), m[0].rate, m[1].rate, "calls/s", higher)
	r.add(w.name+", daemon CPU per call, all processes",
		m[0].perCall(m[0].cpu.Total()), m[1].perCall(m[1].cpu.Total()), "µs", lower)
	r.add(w.name+", of which the main process",
		m[0].perCall(m[0].cpu.Daemon), m[1].perCall(m[1].cpu.Daemon), "µs", lower)
	r.add(w.name+", of which child processes (plugins)",
		m[0].perCall(m[0].cpu.ChildTotal()), m[1].perCall(m[1].cpu.ChildTotal()), "µs", lower)
	return nil
}

// measurement is what one workload gave on one side.
type measurement struct {
	lat   Latency
	rate  float64
	cpu   CPU
	calls int
}

// perCall spreads d over the measured calls, in microseconds.
func (m measurement) perCall(d time.Duration) float64 {
	return micros(d) / float64(m.calls)
}

// measure runs the sequential and the parallel part of a workload and
// reads the daemon's CPU time around both (warm-up excluded).
func measure(ctx context.Context, cfg Config, s *side, call Call) (measurement, error) {
	if _, err := Sequential(ctx, call, cfg.Warmup, 0); err != nil {
		return measurement{}, err
	}
	before, err := s.daemon.CPU()
	if err != nil {
		return measurement{}, err
	}
	m := measurement{calls: cfg.Calls + cfg.ParallelCalls}
	if m.lat, err = Sequential(ctx, call, 0, cfg.Calls); err != nil {
		return measurement{}, err
	}
	if m.rate, err = Parallel(ctx, call, cfg.Workers, cfg.ParallelCalls); err != nil {
		return measurement{}, err
	}
	after, err := s.daemon.CPU()
	if err != nil {
		return measurement{}, err
	}
	m.cpu = after.Sub(before)
	return m, nil
}

func micros(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}
