package service

import (
	"context"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"

	"corral.dev/metadata-svc/metadata"
)

// BlobBackend is the collector's view of the content plugin: a
// [metadata.ContentBackend] on its raw Content API.
type BlobBackend struct {
	c contentapi.ContentClient
}

var _ metadata.ContentBackend = (*BlobBackend)(nil)

// NewBlobBackend returns the backend on the content plugin's client c.
func NewBlobBackend(c contentapi.ContentClient) *BlobBackend {
	return &BlobBackend{c: c}
}

// Blobs implements metadata.ContentBackend.
func (b *BlobBackend) Blobs(ctx context.Context) ([]digest.Digest, error) {
	stream, err := b.c.List(ctx, &contentapi.ListContentRequest{})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	var all []digest.Digest
	for {
		resp, err := stream.Recv()
		if err != nil {
			return all, upstreamEnd(err)
		}
		for _, info := range resp.GetInfo() {
			all = append(all, digest.Digest(info.GetDigest()))
		}
	}
}

// Ingests implements metadata.ContentBackend.
func (b *BlobBackend) Ingests(ctx context.Context) ([]metadata.RawIngest, error) {
	resp, err := b.c.ListStatuses(ctx, &contentapi.ListStatusesRequest{})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	all := make([]metadata.RawIngest, 0, len(resp.GetStatuses()))
	for _, st := range resp.GetStatuses() {
		updated := time.Now() // without a time, as if written just now
		if t := st.GetUpdatedAt(); t != nil {
			updated = t.AsTime()
		}
		all = append(all, metadata.RawIngest{Ref: st.GetRef(), UpdatedAt: updated})
	}
	return all, nil
}

// DeleteBlob implements metadata.ContentBackend.
func (b *BlobBackend) DeleteBlob(ctx context.Context, d digest.Digest) error {
	_, err := b.c.Delete(ctx, &contentapi.DeleteContentRequest{Digest: d.String()})
	return errgrpc.ToNative(err)
}

// AbortIngest implements metadata.ContentBackend.
func (b *BlobBackend) AbortIngest(ctx context.Context, ref string) error {
	_, err := b.c.Abort(ctx, &contentapi.AbortRequest{Ref: ref})
	return errgrpc.ToNative(err)
}
