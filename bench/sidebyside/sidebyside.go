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
	"slices"
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
	// CtrRuns is how many times each ctr command runs on each daemon.
	CtrRuns int
	// Warmup is how many unmeasured calls each workload starts with.
	Warmup int
	// Rounds is how many times each workload runs on each daemon, the
	// daemons taking turns; latencies are pooled over the rounds, the
	// throughput is the median round, CPU is summed.
	Rounds int
	// Calls is how many sequential calls one round measures for latency.
	Calls int
	// Workers is how many goroutines make the parallel calls.
	Workers int
	// ParallelCalls is how many calls the parallel run of one round makes.
	ParallelCalls int
	// ListObjects is how many images and containers exist while the List
	// workloads run.
	ListObjects int
	// TransferRounds is how many times each ctr transfer runs on each
	// daemon, the daemons taking turns.
	TransferRounds int
	// BlobMiB is the size of the blob of content ingest and get.
	BlobMiB int64
	// LayerMiB is the size of the one layer of the imported image.
	LayerMiB int64
}

// DefaultConfig is the full run recorded in README.md.
func DefaultConfig() Config {
	return Config{
		Containerd:     ContainerdPath,
		Ctr:            "/usr/bin/ctr",
		CtrRuns:        30,
		Warmup:         500,
		Rounds:         5,
		Calls:          2000,
		Workers:        16,
		ParallelCalls:  10000,
		ListObjects:    20,
		TransferRounds: 3,
		BlobMiB:        256,
		LayerMiB:       200,
	}
}

// Quick returns c with the small counts of a smoke run, which proves the
// harness works in seconds.
func Quick(c Config) Config {
	c.CtrRuns, c.Warmup, c.Rounds, c.Calls, c.ParallelCalls = 3, 20, 1, 200, 1000
	c.TransferRounds, c.BlobMiB, c.LayerMiB = 1, 8, 8
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
	fs.IntVar(&c.Rounds, "rounds", c.Rounds, "rounds of each workload on each daemon")
	fs.IntVar(&c.Calls, "calls", c.Calls, "sequential calls per round")
	fs.IntVar(&c.Workers, "workers", c.Workers, "goroutines of the parallel run")
	fs.IntVar(&c.ParallelCalls, "parallel-calls", c.ParallelCalls, "calls of the parallel run of a round")
	fs.IntVar(&c.ListObjects, "list-objects", c.ListObjects, "images and containers present for the List workloads")
	fs.IntVar(&c.TransferRounds, "transfer-rounds", c.TransferRounds, "rounds of each ctr transfer on each daemon")
	fs.Int64Var(&c.BlobMiB, "blob-mib", c.BlobMiB, "MiB of the blob of content ingest and get")
	fs.Int64Var(&c.LayerMiB, "layer-mib", c.LayerMiB, "MiB of the layer of the imported image")
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
	ours, err := startSide(func() (*Daemon, error) { return StartOurs(ctx, cfg.Binary) })
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ours.close()) }()
	theirs, err := startSide(func() (*Daemon, error) { return StartContainerd(ctx, cfg.Containerd) })
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, theirs.close()) }()

	report = &Report{Config: cfg, LoadBefore: LoadAverage()}
	if err := report.ctr(ctx, cfg, ours, theirs); err != nil {
		return nil, err
	}
	for _, s := range []*side{ours, theirs} {
		if err := populate(ctx, s.client, cfg.ListObjects); err != nil {
			return nil, fmt.Errorf("populate %s: %w", s.daemon.Name, err)
		}
	}
	for _, w := range workloads {
		if err := report.calls(ctx, cfg, w, ours, theirs); err != nil {
			return nil, err
		}
	}
	if err := report.transfers(ctx, cfg, ours, theirs); err != nil {
		return nil, err
	}
	report.LoadAfter = LoadAverage()
	return report, nil
}

// startSide starts a daemon and connects a Go client to it.
func startSide(start func() (*Daemon, error)) (*side, error) {
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
	{"Images.List", listImages},
	{"Containers.List", listContainers},
}

// sides returns ours and theirs in the order they run in round: the first
// side alternates, so that neither always runs on a machine the other has
// just warmed or loaded.
func sides(round int, ours, theirs *side) []*side {
	if round%2 == 0 {
		return []*side{ours, theirs}
	}
	return []*side{theirs, ours}
}

// ctr times the ctr commands on both sides, alternating run by run.
func (r *Report) ctr(ctx context.Context, cfg Config, ours, theirs *side) error {
	ctrs := []struct{ label, path string }{{"ctr 1.6 version", cfg.Ctr}}
	if cfg.Ctr2 != "" {
		ctrs = append(ctrs, struct{ label, path string }{"ctr 2.x version", cfg.Ctr2})
	}
	for _, c := range ctrs {
		wall := map[*side][]time.Duration{}
		for run := range cfg.CtrRuns {
			for _, s := range sides(run, ours, theirs) {
				d, err := CtrVersion(ctx, c.path, s.daemon.Address)
				if err != nil {
					return err
				}
				wall[s] = append(wall[s], d)
			}
		}
		r.add(c.label+", median wall time",
			micros(percentile(wall[ours], 50)), micros(percentile(wall[theirs], 50)), "µs", lower)
	}
	return nil
}

// calls measures one workload's latency, throughput and CPU on both sides,
// in rounds that alternate between them.
func (r *Report) calls(ctx context.Context, cfg Config, w workload, ours, theirs *side) error {
	m := map[*side]*measurement{ours: {}, theirs: {}}
	for _, s := range []*side{ours, theirs} {
		if _, err := Sequential(ctx, w.call(s.client), cfg.Warmup); err != nil {
			return fmt.Errorf("warm up %s on %s: %w", w.name, s.daemon.Name, err)
		}
	}
	for round := range cfg.Rounds {
		for _, s := range sides(round, ours, theirs) {
			if err := m[s].round(ctx, cfg, s, w.call(s.client)); err != nil {
				return fmt.Errorf("%s on %s: %w", w.name, s.daemon.Name, err)
			}
		}
	}

	o, t := m[ours], m[theirs]
	lo, lt := Summarize(o.latencies), Summarize(t.latencies)
	r.add(w.name+", sequential median", micros(lo.Median), micros(lt.Median), "µs", lower)
	r.add(w.name+", sequential p99", micros(lo.P99), micros(lt.P99), "µs", lower)
	r.add(fmt.Sprintf("%s, %d-way throughput", w.name, cfg.Workers),
		median(o.rates), median(t.rates), "calls/s", higher)
	// CPU per call apart for each part: a sequential call finds the daemon
	// parked and pays for waking it, a call among 16 seldom does.
	parts := []struct {
		name string
		o, t cpuCalls
	}{
		{"sequential", o.seq, t.seq},
		{fmt.Sprintf("%d-way", cfg.Workers), o.par, t.par},
	}
	for _, p := range parts {
		// The harness's own time, the Go client's mostly: what a daemon
		// leaves of the machine's CPUs goes to it.
		r.add(fmt.Sprintf("%s, %s, client CPU per call", w.name, p.name),
			p.o.per(p.o.client), p.t.per(p.t.client), "µs", lower)
		prefix := fmt.Sprintf("%s, %s, daemon CPU per call", w.name, p.name)
		r.add(prefix+", all processes", p.o.per(p.o.cpu.Total()), p.t.per(p.t.cpu.Total()), "µs", lower)
		r.add(prefix+", of which the main process", p.o.per(p.o.cpu.Daemon), p.t.per(p.t.cpu.Daemon), "µs", lower)
		r.add(prefix+", of which child processes (plugins)",
			p.o.per(p.o.cpu.ChildTotal()), p.t.per(p.t.cpu.ChildTotal()), "µs", lower)
	}
	return nil
}

// measurement is what one workload gave on one side over every round.
type measurement struct {
	latencies []time.Duration // every sequential call
	rates     []float64       // calls/s of each parallel run
	seq, par  cpuCalls        // the daemon's CPU over the sequential and parallel calls
}

// cpuCalls is the daemon's CPU, and the harness's, over a number of calls.
type cpuCalls struct {
	cpu    CPU
	client time.Duration
	calls  int
}

// per spreads d over the calls, in microseconds.
func (c cpuCalls) per(d time.Duration) float64 {
	if c.calls == 0 {
		return 0
	}
	return micros(d) / float64(c.calls)
}

// round runs the sequential and the parallel part of a workload once and
// adds the daemon's CPU time around each.
func (m *measurement) round(ctx context.Context, cfg Config, s *side, call Call) error {
	before, cBefore, err := cpuBoth(s)
	if err != nil {
		return err
	}
	latencies, err := Sequential(ctx, call, cfg.Calls)
	if err != nil {
		return err
	}
	middle, cMiddle, err := cpuBoth(s)
	if err != nil {
		return err
	}
	rate, err := Parallel(ctx, call, cfg.Workers, cfg.ParallelCalls)
	if err != nil {
		return err
	}
	after, cAfter, err := cpuBoth(s)
	if err != nil {
		return err
	}

	m.latencies = append(m.latencies, latencies...)
	m.rates = append(m.rates, rate)
	m.seq.add(middle.Sub(before), cMiddle-cBefore, cfg.Calls)
	m.par.add(after.Sub(middle), cAfter-cMiddle, cfg.ParallelCalls)
	return nil
}

// add counts calls that took cpu of the daemon and client of the harness.
func (c *cpuCalls) add(cpu CPU, client time.Duration, calls int) {
	c.cpu, c.client, c.calls = c.cpu.Add(cpu), c.client+client, c.calls+calls
}

// cpuBoth reads the daemon's CPU time and the harness's own.
func cpuBoth(s *side) (CPU, time.Duration, error) {
	d, err := s.daemon.CPU()
	if err != nil {
		return CPU{}, 0, err
	}
	self, err := SelfCPU()
	return d, self, err
}

func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	return sorted[(len(sorted)-1)/2]
}

func micros(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}
