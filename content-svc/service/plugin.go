// Package service serves content-svc's raw Content service on the blob
// store, and defines the plugin ("content") that the supervisor starts to
// run it. The plugin is private: only other plugins, the metadata plugin
// first, reach it through the supervisor, except for the public
// Content.Write streams, which the supervisor routes here so that their
// bytes make one hop.
package service

import (
	"context"

	"corral.dev/content-svc/store"
	"corral.dev/pluginkit"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// MetadataPluginID is the plugin that keeps the namespaces' records of the
// blobs and ingests, and serves the Ingests service.
const MetadataPluginID = "bolt"

// Plugin is the content plugin, io.containerd.content.v1.content.
var Plugin = pluginkit.Plugin{
	Type:    "io.containerd.content.v1",
	ID:      "content",
	Private: true,
	Methods: []string{"/containerd.services.content.v1.Content/Write"},
	Init:    initPlugin,
}

// initPlugin opens the store in the plugin's root, resuming or cleaning
// what an earlier process left, and registers the service on it.
func initPlugin(_ context.Context, ic *pluginkit.InitContext) error {
	s, err := store.Open(ic.Root, store.WithLogger(ic.Log))
	if err != nil {
		return err
	}
	c := NewContent(s, ic.Log, WithIngests(ingestv1.NewIngestsClient(ic.Dial(MetadataPluginID))))
	if ic.Metrics != nil {
		if err := c.RegisterMetrics(ic.Metrics); err != nil {
			return err
		}
	}
	c.Register(ic.Server)
	return nil
}
