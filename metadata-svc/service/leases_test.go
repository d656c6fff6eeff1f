package service_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
)

func TestLeasesService(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctx := inNamespace("ns")

	created, err := env.leases.Create(ctx, &leasesapi.CreateRequest{Labels: map[string]string{"a": "1", "bare": ""}})
	checkClass(t, "Create without id", err, nil)
	id := created.GetLease().GetID()
	if !regexp.MustCompile(`^[0-9]+-[A-Za-z0-9]{4}$`).MatchString(id) {
		t.Errorf("generated id = %q, want <nanos>-<4 characters>", id)
	}
	if diff := cmp.Diff(map[string]string{"a": "1"}, created.GetLease().GetLabels()); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	_, err = env.leases.Create(ctx, &leasesapi.CreateRequest{ID: id})
	checkClass(t, "Create existing", err, errdefs.ErrAlreadyExists)
	_, err = env.leases.Create(ctx, &leasesapi.CreateRequest{ID: "bad\nid"})
	checkClass(t, "Create bad id", err, errdefs.ErrInvalidArgument)
	_, err = env.leases.Create(context.Background(), &leasesapi.CreateRequest{ID: "x"})
	checkClass(t, "Create without namespace", err, errdefs.ErrFailedPrecondition)

	list, err := env.leases.List(ctx, &leasesapi.ListRequest{Filters: []string{"labels.a==1"}})
	checkClass(t, "List", err, nil)
	if len(list.GetLeases()) != 1 || list.GetLeases()[0].GetID() != id {
		t.Errorf("List(labels.a==1) = %v, want [%s]", list.GetLeases(), id)
	}

	r := &leasesapi.Resource{ID: "extract-1 sha256:abc", Type: "snapshots/overlayfs"}
	_, err = env.leases.AddResource(ctx, &leasesapi.AddResourceRequest{ID: id, Resource: r})
	checkClass(t, "AddResource", err, nil)
	_, err = env.leases.AddResource(ctx, &leasesapi.AddResourceRequest{ID: id})
	checkClass(t, "AddResource without resource", err, errdefs.ErrInvalidArgument)
	res, err := env.leases.ListResources(ctx, &leasesapi.ListResourcesRequest{ID: id})
	checkClass(t, "ListResources", err, nil)
	if diff := cmp.Diff([]*leasesapi.Resource{r}, res.GetResources(), protocmp.Transform()); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
	_, err = env.leases.DeleteResource(ctx, &leasesapi.DeleteResourceRequest{ID: id, Resource: r})
	checkClass(t, "DeleteResource", err, nil)

	_, err = env.leases.Delete(ctx, &leasesapi.DeleteRequest{ID: id})
	checkClass(t, "Delete", err, nil)
	_, err = env.leases.Delete(ctx, &leasesapi.DeleteRequest{ID: id})
	checkClass(t, "Delete again", err, errdefs.ErrNotFound)
}

func TestLeasesDeleteSyncCollects(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctx := inNamespace("ns")
	data := []byte("leased only")
	d := digest.FromBytes(data)
	exp := time.Now().Add(time.Hour).Format(time.RFC3339)
	labels := map[string]string{metadata.LabelExpire: exp}
	_, err := env.leases.Create(ctx, &leasesapi.CreateRequest{ID: "l", Labels: labels})
	checkClass(t, "Create", err, nil)
	_, err = (write{ref: "r", data: data, expected: d}).run(underLease(ctx, "l"), env.content)
	checkClass(t, "write", err, nil)

	if err := env.gc.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	_, err = env.content.Info(ctx, &contentapi.InfoRequest{Digest: d.String()})
	checkClass(t, "Info while leased", err, nil)

	// The lease header is still set on Delete, as ctr sends it.
	_, err = env.leases.Delete(underLease(ctx, "l"), &leasesapi.DeleteRequest{ID: "l", Sync: true})
	checkClass(t, "Delete sync", err, nil)
	_, err = env.content.Info(ctx, &contentapi.InfoRequest{Digest: d.String()})
	checkClass(t, "Info after the lease", err, errdefs.ErrNotFound)
	_, err = env.raw.Info(context.Background(), &contentapi.InfoRequest{Digest: d.String()})
	checkClass(t, "bytes after the lease", err, errdefs.ErrNotFound)
}

func TestInitServesContentAndLeases(t *testing.T) {
	gs := grpc.NewServer()
	ic := &pluginkit.InitContext{
		Root:    t.TempDir(),
		Config:  &service.Config{ContentSharingPolicy: service.SharingShared},
		Server:  gs,
		Events:  &recordingPublisher{},
		Metrics: prometheus.NewRegistry(),
		Log:     zerolog.Nop(),
	}
	if err := service.Plugin.Init(context.Background(), ic); err != nil {
		t.Fatalf("Init: %v", err)
	}
	for _, name := range []string{
		"containerd.services.content.v1.Content",
		"containerd.services.leases.v1.Leases",
	} {
		if _, ok := gs.GetServiceInfo()[name]; !ok {
			t.Errorf("Init did not register %s", name)
		}
	}
}
