package sidebyside

import (
	"testing"
	"time"

	// The flag -test.root must exist in every test binary of the module.
	_ "corral.dev/pluginkit/testkit"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want procStat
	}{
		{
			name: "plain",
			stat: "42 (containerd) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 12 0 99 0 0",
			want: procStat{pid: 42, ppid: 1, comm: "containerd", cpu: 287 * clockTick},
		},
		{
			name: "name with spaces and parentheses",
			stat: "7 (a) b (c) R 3 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 0",
			want: procStat{pid: 7, ppid: 3, comm: "a) b (c", cpu: 3 * clockTick},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat(tt.want.pid, []byte(tt.stat))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("parseStat(%q) = %+v, want %+v", tt.stat, got, tt.want)
			}
		})
	}
	if _, err := parseStat(1, []byte("1 (x) S 0")); err == nil {
		t.Error("parseStat of a short line: no error")
	}
}

func TestPercentile(t *testing.T) {
	samples := make([]time.Duration, 100)
	for i := range samples {
		samples[i] = time.Duration(100-i) * time.Microsecond // reversed
	}
	tests := []struct {
		p    int
		want time.Duration
	}{
		{50, 50 * time.Microsecond},
		{99, 99 * time.Microsecond},
		{100, 100 * time.Microsecond},
		{0, time.Microsecond},
	}
	for _, tt := range tests {
		if got := percentile(samples, tt.p); got != tt.want {
			t.Errorf("percentile(1..100µs, %d) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil, 50) = %v, want 0", got)
	}
}

// TestSelfCPU: the harness's own CPU time grows with work it does.
func TestSelfCPU(t *testing.T) {
	before, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	after, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 20*time.Millisecond {
		t.Errorf("50 ms of spinning took %v of CPU", d)
	}
}
