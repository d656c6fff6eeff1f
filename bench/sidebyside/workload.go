package sidebyside

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Call is one round trip of a workload.
type Call func(ctx context.Context) error

// Latency summarises sequential round trips.
type Latency struct {
	Median, P99 time.Duration
}

// Sequential makes n calls one after the other and returns the duration
// of each.
func Sequential(ctx context.Context, call Call, n int) ([]time.Duration, error) {
	samples := make([]time.Duration, n)
	for i := range samples {
		start := time.Now()
		if err := call(ctx); err != nil {
			return nil, fmt.Errorf("call %d: %w", i, err)
		}
		samples[i] = time.Since(start)
	}
	return samples, nil
}

// Summarize returns the median and 99th percentile of samples, which it
// sorts.
func Summarize(samples []time.Duration) Latency {
	return Latency{Median: percentile(samples, 50), P99: percentile(samples, 99)}
}

// Parallel makes n calls from workers goroutines that share call, and
// returns the rate at which they completed.
func Parallel(ctx context.Context, call Call, workers, n int) (perSecond float64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := call(ctx); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("%d-way calls: %w", workers, firstErr)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// CtrVersion runs `ctr --address address version` and returns its wall
// time, process start and exit included.
func CtrVersion(ctx context.Context, ctr, address string) (time.Duration, error) {
	start := time.Now()
	out, err := exec.CommandContext(ctx, ctr, "--address", address, "version").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("run %s version against %s: %w\n%s", ctr, address, err, out)
	}
	return time.Since(start), nil
}

// percentile returns the p-th percentile of samples by the nearest-rank
// method; it sorts samples.
func percentile(samples []time.Duration, p int) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	rank := (p*len(samples) + 99) / 100 // ceil(p/100 * n)
	return samples[max(rank, 1)-1]
}
