package lane

import (
	"context"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFlow(t *testing.T) {
	ctx := context.Background()
	f := newFlow()

	// A message may take the credit below zero; the next one waits.
	if err := f.take(ctx, InitialCredit+10); err != nil {
		t.Fatalf("take within the initial credit = %v", err)
	}
	done := make(chan error)
	go func() { done <- f.take(ctx, 100) }()
	f.grant(10) // back to zero: still no credit
	f.grant(1)
	if err := <-done; err != nil {
		t.Fatalf("take after a grant = %v", err)
	}
	if f.credit != 1-100 {
		t.Errorf("credit %d, want %d", f.credit, 1-100)
	}

	for range 4 {
		f.grant(math.MaxUint32)
	}
	if f.credit != maxCredit {
		t.Errorf("credit after large grants %d, want the cap %d", f.credit, maxCredit)
	}
}

func TestFlowEndsWithContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want codes.Code
	}{
		{"cancel", func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, codes.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Millisecond)
		}, codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			f := newFlow()
			f.credit = 0
			done := make(chan error)
			go func() { done <- f.take(ctx, 1) }()
			if tc.want == codes.Canceled {
				cancel()
			}
			if err := <-done; status.Code(err) != tc.want {
				t.Errorf("take = %v, want %v", err, tc.want)
			}

			// An ended context stops a send even with credit to spare.
			f.grant(100)
			if err := f.take(ctx, 1); status.Code(err) != tc.want {
				t.Errorf("take with credit after the end = %v, want %v", err, tc.want)
			}
		})
	}
}
