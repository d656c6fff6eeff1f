package metadata

import (
	"context"
	"errors"
	"strings"
	"testing"

	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"
)

func ns(name string, kv ...string) *api.Namespace {
	labels := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		labels[kv[i]] = kv[i+1]
	}
	return &api.Namespace{Name: name, Labels: labels}
}

func TestNamespaceStore(t *testing.T) {
	ctx := context.Background()
	long := strings.Repeat("k", 10)
	tests := []struct {
		name    string
		seed    func(t *testing.T, db *DB)
		do      func(s *NamespaceStore) (any, error)
		want    any
		wantErr error  // errdefs class
		wantMsg string // the whole error message, when set
		after   []*api.Namespace
	}{
		{
			name:  "create",
			do:    func(s *NamespaceStore) (any, error) { return s.Create(ctx, "a", map[string]string{"k": "v"}) },
			want:  ns("a", "k", "v"),
			after: []*api.Namespace{ns("a", "k", "v")},
		},
		{
			name: "create existing",
			seed: create("a", "k", "v"),
			do:   func(s *NamespaceStore) (any, error) { return s.Create(ctx, "a", nil) },

			wantErr: errdefs.ErrAlreadyExists,
			wantMsg: `namespace "a": already exists`,
			after:   []*api.Namespace{ns("a", "k", "v")},
		},
		{
			name:    "create bad name",
			do:      func(s *NamespaceStore) (any, error) { return s.Create(ctx, "-a", nil) },
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "create empty name",
			do:      func(s *NamespaceStore) (any, error) { return s.Create(ctx, "", nil) },
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "create name too long",
			do: func(s *NamespaceStore) (any, error) {
				return s.Create(ctx, strings.Repeat("a", 77), nil)
			},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "create label at limit",
			do: func(s *NamespaceStore) (any, error) {
				return s.Create(ctx, "a", map[string]string{long: strings.Repeat("v", 4086)})
			},
			want: ns("a", long, strings.Repeat("v", 4086)),
		},
		{
			name: "create label over limit",
			do: func(s *NamespaceStore) (any, error) {
				return s.Create(ctx, "a", map[string]string{long: strings.Repeat("v", 4087)})
			},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `create namespace "a": label "kkkkkkkkkk": key and value take 4097 bytes, more than 4096: invalid argument`,
		},
		{
			name:    "create empty label key",
			do:      func(s *NamespaceStore) (any, error) { return s.Create(ctx, "a", map[string]string{"": "v"}) },
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "get",
			seed: create("a", "k", "v"),
			do:   func(s *NamespaceStore) (any, error) { return s.Get(ctx, "a") },
			want: ns("a", "k", "v"),
		},
		{
			name: "get unknown has no labels",
			do:   func(s *NamespaceStore) (any, error) { return s.Get(ctx, "nope") },
			want: ns("nope"),
		},
		{
			name:    "get bad name",
			do:      func(s *NamespaceStore) (any, error) { return s.Get(ctx, "a/b") },
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "list sorted",
			seed: seeds(create("b"), create("a", "k", "v")),
			do:   func(s *NamespaceStore) (any, error) { return s.List(ctx) },
			want: []*api.Namespace{ns("a", "k", "v"), ns("b")},
		},
		{
			name: "list empty",
			do:   func(s *NamespaceStore) (any, error) { return s.List(ctx) },
			want: []*api.Namespace(nil),
		},
		{
			name: "update without paths replaces",
			seed: create("a", "k", "v", "old", "x"),
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"k": "v2", "new": "y", "empty": ""}, nil)
			},
			want:  ns("a", "k", "v2", "new", "y"),
			after: []*api.Namespace{ns("a", "k", "v2", "new", "y")},
		},
		{
			name: "update labels replaces",
			seed: create("a", "old", "x"),
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"k": "v"}, []string{"labels"})
			},
			want: ns("a", "k", "v"),
		},
		{
			name: "update labels.key sets and deletes",
			seed: create("a", "keep", "1", "gone", "2", "set", "3"),
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"set": "4", "ignored": "5"},
					[]string{"labels.set", "labels.gone", "labels.absent"})
			},
			want: ns("a", "keep", "1", "set", "4"),
		},
		{
			name: "update bad path",
			seed: create("a", "k", "v"),
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"k": "w"}, []string{"labels.k", "name"})
			},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `update namespace "a": update field "name": invalid argument`,
			after:   []*api.Namespace{ns("a", "k", "v")},
		},
		{
			name: "update label over limit",
			seed: create("a"),
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "a", map[string]string{"k": strings.Repeat("v", 4096)},
					[]string{"labels.k"})
			},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "update unknown creates",
			do: func(s *NamespaceStore) (any, error) {
				return s.Update(ctx, "new", map[string]string{"k": "v"}, []string{"labels.k"})
			},
			want:  ns("new", "k", "v"),
			after: []*api.Namespace{ns("new", "k", "v")},
		},
		{
			name:    "update bad name",
			do:      func(s *NamespaceStore) (any, error) { return s.Update(ctx, "a..b", nil, nil) },
			wantErr: errdefs.ErrInvalidArgument,
			after:   []*api.Namespace{},
		},
		{
			name:  "delete",
			seed:  seeds(create("a", "k", "v"), create("b")),
			do:    func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			after: []*api.Namespace{ns("b")},
		},
		{
			name:    "delete unknown",
			do:      func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			wantErr: errdefs.ErrNotFound,
			wantMsg: `namespace "a": not found`,
		},
		{
			name:    "delete bad name",
			do:      func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a b") },
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "delete with images",
			seed:    resource("a", "images"),
			do:      func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			wantErr: errdefs.ErrFailedPrecondition,
			wantMsg: `namespace "a" must be empty, but it still has images: failed precondition`,
			after:   []*api.Namespace{ns("a")},
		},
		{
			name:    "delete with blobs",
			seed:    resource("a", "content", "blobs"),
			do:      func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			wantErr: errdefs.ErrFailedPrecondition,
			wantMsg: `namespace "a" must be empty, but it still has blobs: failed precondition`,
		},
		{
			name: "delete with everything",
			seed: seeds(
				resource("a", "containers"),
				resource("a", "snapshots", "overlayfs"),
				resource("a", "images"),
			),
			do:      func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			wantErr: errdefs.ErrFailedPrecondition,
			wantMsg: `namespace "a" must be empty, but it still has images, containers, ` +
				`snapshots on "overlayfs" snapshotter: failed precondition`,
		},
		{
			name: "delete with leases and empty buckets",
			seed: seeds(
				resource("a", "leases"),
				resource("a", "content", "ingests"),
				emptyBucket("a", "images"),
				emptyBucket("a", "snapshots", "btrfs"),
			),
			do:    func(s *NamespaceStore) (any, error) { return nil, s.Delete(ctx, "a") },
			after: []*api.Namespace{},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			if tt.seed != nil {
				tt.seed(t, db)
			}

			got, err := tt.do(db.Namespaces())
			checkErr(t, err, tt.wantErr, tt.wantMsg)
			if tt.wantErr == nil {
				if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
					t.Errorf("result mismatch (-want +got):\n%s", diff)
				}
			}
			if tt.after != nil {
				list, err := db.Namespaces().List(ctx)
				if err != nil {
					t.Fatalf("List: %v", err)
				}
				if diff := cmp.Diff(tt.after, list, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("namespaces after mismatch (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// checkErr fails t unless err has the errdefs class want (nil: no error)
// and, when msg is set, exactly that message.
func checkErr(t *testing.T, err, want error, msg string) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("error = %v, want none", err)
	case want == nil:
		return
	case !errors.Is(err, want):
		t.Fatalf("error = %v, want class %v", err, want)
	case msg != "" && err.Error() != msg:
		t.Errorf("error = %q, want %q", err.Error(), msg)
	}
}

func create(name string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		t.Helper()
		if _, err := db.Namespaces().Create(context.Background(), name, ns(name, kv...).Labels); err != nil {
			t.Fatalf("Create(%q): %v", name, err)
		}
	}
}

func resource(name string, path ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) { seedResource(t, db, name, path...) }
}

func emptyBucket(name string, path ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) { seedEmptyBucket(t, db, name, path...) }
}

func seeds(fns ...func(t *testing.T, db *DB)) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		for _, fn := range fns {
			fn(t, db)
		}
	}
}
