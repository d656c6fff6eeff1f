// Package service serves content-svc's raw Content service on the blob
// store, and defines the plugin ("content") that the supervisor starts to
// run it. The plugin is private: only other plugins, the metadata plugin
// first, reach it through the supervisor.
package service

import (
	"context"

	"corral.dev/content-svc/store"
	"corral.dev/pluginkit"
)

// Plugin is the content plugin, io.containerd.content.v1.content.
var Plugin = pluginkit.Plugin{
	Type:    "io.containerd.content.v1",
	ID:      "content",
	Private: true,
	Init:    initPlugin,
}

// initPlugin opens the store in the plugin's root, resuming or cleaning
// what an earlier process left, and registers the service on it.
func initPlugin(_ context.Context, ic *pluginkit.InitContext) error {
	s, err := store.Open(ic.Root, store.WithLogger(ic.Log))
	if err != nil {
		return err
	}
	c := NewContent(s, ic.Log)
	if ic.Metrics != nil {
		if err := c.RegisterMetrics(ic.Metrics); err != nil {
			return err
		}
	}
	c.Register(ic.Server)
	return nil
}
