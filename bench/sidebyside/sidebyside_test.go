//go:build linux

package sidebyside_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"corral.dev/bench/sidebyside"
	"corral.dev/pluginkit/testkit"
)

// TestQuickRun runs the whole harness with the smoke counts: both daemons
// start, every workload gives a figure for each, and nothing is left
// running afterwards.
func TestQuickRun(t *testing.T) {
	testkit.RequiresRoot(t)
	cfg := sidebyside.Quick(sidebyside.DefaultConfig())
	cfg.Binary = ourBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	report, err := sidebyside.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := report.Write(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())

	// Every latency and rate must have been measured on both sides.
	for _, name := range []string{
		"ctr 1.6 version, median wall time",
		"Version, sequential median",
		"Version, sequential p99",
		"Version, 16-way throughput",
		"Namespaces.List, sequential median",
		"Namespaces.List, sequential p99",
		"Namespaces.List, 16-way throughput",
		"Images.List, sequential median",
		"Images.List, 16-way throughput",
		"Containers.List, sequential median",
		"Containers.List, 16-way throughput",
		"ctr 1.6 content ingest 8 MiB, throughput",
		"ctr 1.6 content get 8 MiB, throughput",
		"Go client Content.Read 8 MiB in one call, throughput",
		"ctr 1.6 images import --no-unpack, 8 MiB layer, throughput",
	} {
		row, ok := report.Row(name)
		if !ok {
			t.Errorf("report has no row %q", name)
			continue
		}
		if row.Ours <= 0 || row.Theirs <= 0 {
			t.Errorf("%s: ours %v, containerd %v, want both > 0", name, row.Ours, row.Theirs)
		}
	}

	// Our plugin process is a child of the supervisor, so its CPU shows.
	if row, _ := report.Row("Namespaces.List, 16-way, daemon CPU per call, of which child processes (plugins)"); row.Ours <= 0 {
		t.Errorf("no CPU measured for our plugin processes: %+v", row)
	}

	// Run stops every process by pid before it returns. A binary passed in
	// may be running elsewhere, so only a fresh build is checked.
	if *binaryFlag != "" {
		return
	}
	pids, err := processesOf(cfg.Binary)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) > 0 {
		t.Errorf("processes of %s still running after Run: %v", cfg.Binary, pids)
	}
}
