package metadata

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestReplayReturnsFirstOutcome(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		seed func(t *testing.T, db *DB)
		// first runs the recorded call; between changes the state so that a
		// second execution would answer differently.
		first, between func(s *NamespaceStore) (any, error)
		wantErr        error
		after          []*api.Namespace
	}{
		{
			name: "create",
			first: func(s *NamespaceStore) (any, error) {
				return s.Create(call("c1"), "a", map[string]string{"k": "v"})
			},
			between: func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			after:   []*api.Namespace{},
		},
		{
			name: "update",
			first: func(s *NamespaceStore) (any, error) {
				return s.Update(call("c1"), "a", map[string]string{"k": "v"}, nil)
			},
			between: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"k": "other"}, nil)
			},
			after: []*api.Namespace{ns("a", "k", "other")},
		},
		{
			name:  "delete",
			first: func(s *NamespaceStore) (any, error) { return nil, s.Delete(call("c1"), "a") },
			between: func(s *NamespaceStore) (any, error) {
				return s.Create(ctx, "a", nil)
			},
			wantErr: errdefs.ErrNotFound,
			after:   []*api.Namespace{ns("a")},
		},
		{
			name: "create that failed",
			seed: create("a", "k", "v"),
			first: func(s *NamespaceStore) (any, error) {
				return s.Create(call("c1"), "a", nil)
			},
			between: func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			wantErr: errdefs.ErrAlreadyExists,
			after:   []*api.Namespace{},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			s := db.Namespaces()
			if tt.seed != nil {
				tt.seed(t, db)
			}

			want, wantErr := tt.first(s)
			if _, err := tt.between(s); err != nil {
				t.Fatalf("between: %v", err)
			}
			got, err := tt.first(s)

			checkErr(t, err, tt.wantErr, "")
			if fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Errorf("replay error = %v, want %v", err, wantErr)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("replay result mismatch (-first +replay):\n%s", diff)
			}
			list, err := s.List(ctx)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if diff := cmp.Diff(tt.after, list, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("namespaces after replay (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReplayKeepsErrorClass(t *testing.T) {
	db := openTestDB(t)
	s := db.Namespaces()
	seedResource(t, db, "busy", "images")

	first := s.Delete(call("d1"), "busy")
	replay := s.Delete(call("d1"), "busy")

	if !errdefs.IsFailedPrecondition(replay) {
		t.Errorf("replay error = %v, want failed precondition", replay)
	}
	if first.Error() != replay.Error() {
		t.Errorf("replay message = %q, want %q", replay.Error(), first.Error())
	}
}

func TestNoCallIDRecordsNothing(t *testing.T) {
	db := openTestDB(t)
	s := db.Namespaces()

	if _, err := s.Create(context.Background(), "a", nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.Create(call(""), "b", nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.Create(context.Background(), "a", nil); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second Create error = %v, want already exists", err)
	}
	if byID, byTime := countCalls(t, db); byID != 0 || byTime != 0 {
		t.Errorf("records = %d by id, %d by time, want none", byID, byTime)
	}
}

func TestCallIDTooLong(t *testing.T) {
	db := openTestDB(t)
	_, err := db.Namespaces().Create(call(strings.Repeat("x", 257)), "a", nil)
	checkErr(t, err, errdefs.ErrInvalidArgument, "")
}

func TestExpiredCallsArePruned(t *testing.T) {
	clock := newTestClock()
	db := openTestDB(t, WithClock(clock.Now))
	s := db.Namespaces()

	if _, err := s.Create(call("old"), "a", nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	clock.Advance(DefaultCallTTL - time.Second)
	if _, err := s.Create(call("young"), "b", nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if byID, _ := countCalls(t, db); byID != 2 {
		t.Fatalf("records before expiry = %d, want 2", byID)
	}

	clock.Advance(2 * time.Second)
	if _, err := s.Create(call("new"), "c", nil); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if byID, byTime := countCalls(t, db); byID != 2 || byTime != 2 {
		t.Errorf("records after expiry = %d by id, %d by time, want 2 and 2", byID, byTime)
	}

	// Without its record, "old" runs again.
	if _, err := s.Create(call("old"), "a", nil); !errdefs.IsAlreadyExists(err) {
		t.Errorf("expired replay error = %v, want already exists", err)
	}
}

func TestPruneIsBoundedPerWrite(t *testing.T) {
	clock := newTestClock()
	db := openTestDB(t, WithClock(clock.Now))
	s := db.Namespaces()
	const n = pruneBatch + 36
	for i := range n {
		if _, err := s.Update(call(fmt.Sprint("u", i)), "a", nil, nil); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}

	clock.Advance(DefaultCallTTL + time.Second)
	if _, err := s.Update(call("last"), "a", nil, nil); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if byID, _ := countCalls(t, db); byID != n-pruneBatch+1 {
		t.Errorf("records after one write = %d, want %d", byID, n-pruneBatch+1)
	}
}

func TestOpenPrunesAllExpiredCalls(t *testing.T) {
	clock := newTestClock()
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := Open(path, WithClock(clock.Now))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	for i := range pruneBatch * 2 {
		if _, err := db.Namespaces().Update(call(fmt.Sprint("u", i)), "a", nil, nil); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	db.Close()

	clock.Advance(DefaultCallTTL + time.Second)
	db, err = Open(path, WithClock(clock.Now))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer db.Close()
	if byID, byTime := countCalls(t, db); byID != 0 || byTime != 0 {
		t.Errorf("records after reopen = %d by id, %d by time, want none", byID, byTime)
	}
}
