package service

import (
	contentapi "github.com/containerd/containerd/api/services/content/v1"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// ContentPluginID is the id of the private plugin that keeps the bytes of
// every blob.
const ContentPluginID = "content"

// startGC starts the garbage collector of db, which deletes bytes through
// the content plugin, and stops it when the plugin closes. Services call
// its Collect after a delete: Collect(ctx, true) runs a collection before
// returning (a request with sync: true), Collect(ctx, false) schedules one.
func startGC(
	ic *pluginkit.InitContext,
	db *metadata.DB,
	blobs contentapi.ContentClient,
) (*metadata.GC, error) {
	gc := metadata.NewGC(db, NewBlobBackend(blobs),
		metadata.WithGCEvents(ic.Events),
		metadata.WithGCLogger(ic.Log),
	)
	if ic.Metrics != nil {
		if err := gc.Register(ic.Metrics); err != nil {
			return nil, err
		}
	}
	if err := gc.Start(); err != nil {
		return nil, err
	}
	ic.OnClose(gc.Close)
	return gc, nil
}
