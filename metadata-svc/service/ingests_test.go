package service_test

import (
	"context"
	"strings"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	grpcmd "google.golang.org/grpc/metadata"

	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// TestIngestsRejectBadInput sends the Ingests service what content-svc
// never would: each is InvalidArgument and leaves no record.
func TestIngestsRejectBadInput(t *testing.T) {
	env := newContentEnv(t, service.SharingIsolated)
	ctx := context.Background()
	d := digest.FromString("x").String()

	for name, req := range map[string]*ingestv1.BeginRequest{
		"bad namespace":  {Namespace: "bad/ns", Ref: "r"},
		"no namespace":   {Ref: "r"},
		"no ref":         {Namespace: "a"},
		"bad expected":   {Namespace: "a", Ref: "r", Expected: "sha256:../../etc/passwd"},
		"short expected": {Namespace: "a", Ref: "r", Expected: "sha256:abc", CheckExisting: true},
	} {
		_, err := env.ingests.Begin(ctx, req)
		checkClass(t, "Begin with "+name, err, errdefs.ErrInvalidArgument)
	}
	for name, req := range map[string]*ingestv1.RecordRequest{
		"bad namespace": {Namespace: "bad/ns", Digest: d, Size: 1},
		"bad digest":    {Namespace: "a", Digest: "sha256:../x", Size: 1},
		"big label":     {Namespace: "a", Digest: d, Size: 1, Labels: map[string]string{"k": strings.Repeat("v", 4096)}},
		"empty key":     {Namespace: "a", Digest: d, Size: 1, Labels: map[string]string{"": "v"}},
	} {
		_, err := env.ingests.Record(ctx, req)
		checkClass(t, "Record with "+name, err, errdefs.ErrInvalidArgument)
	}
	_, err := env.content.Info(inNamespace("a"), &contentapi.InfoRequest{Digest: d})
	checkClass(t, "Info after rejected records", err, errdefs.ErrNotFound)
	st, err := env.content.ListStatuses(inNamespace("a"), &contentapi.ListStatusesRequest{})
	if err != nil || len(st.GetStatuses()) != 0 {
		t.Errorf("ListStatuses = %v, %v; want none", st, err)
	}
}

// TestIngestsRecordReplay records a blob twice under one call id, as the
// supervisor replays a call whose plugin died before answering: the replay
// gets the first answer and publishes again. A new call for the same blob
// is AlreadyExists.
func TestIngestsRecordReplay(t *testing.T) {
	env := newContentEnv(t, service.SharingIsolated)
	d := digest.FromString("replayed").String()
	req := &ingestv1.RecordRequest{Namespace: "a", Ref: "r", Digest: d, Size: 8}
	call := func(id string) error {
		ctx := grpcmd.AppendToOutgoingContext(context.Background(), pluginkit.CallIDKey, id)
		_, err := env.ingests.Record(ctx, req)
		return err
	}
	// Events are delivered at least once: the first attempt may have died
	// before publishing.
	for _, c := range []struct {
		id     string
		want   error
		events int
	}{
		{"call-1", nil, 1},
		{"call-1", nil, 1},
		{"call-2", errdefs.ErrAlreadyExists, 0},
	} {
		checkClass(t, "Record "+c.id, call(c.id), c.want)
		evs := env.pub.take()
		if len(evs) != c.events || (c.events > 0 && (evs[0].Topic != service.TopicContentCreate || evs[0].NS != "a")) {
			t.Errorf("Record %s published %v, want %d %s in a", c.id, evs, c.events, service.TopicContentCreate)
		}
	}

	info, err := env.content.Info(inNamespace("a"), &contentapi.InfoRequest{Digest: d})
	if err != nil || info.GetInfo().GetSize() != 8 {
		t.Errorf("Info = %v, %v; want the recorded blob of 8 bytes", info, err)
	}
}
