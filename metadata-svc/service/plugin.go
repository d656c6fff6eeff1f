// Package service serves metadata-svc's public gRPC services on the
// metadata database, and defines the plugin ("bolt") that the supervisor
// starts to run them.
package service

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// Content sharing policies, the values of Config.ContentSharingPolicy.
const (
	// SharingShared lets every namespace use a blob that is already in the
	// content store once it proves it has the content.
	SharingShared = "shared"
	// SharingIsolated makes every namespace write a blob itself before it
	// can read it.
	SharingIsolated = "isolated"
)

// DBName is the name of the database file in the plugin's root directory.
const DBName = "meta.db"

// Config is the plugin's configuration, the [plugins.bolt] section.
type Config struct {
	// ContentSharingPolicy is SharingShared (the default) or SharingIsolated.
	ContentSharingPolicy string `toml:"content_sharing_policy"`
}

// Validate returns an error wrapping [errdefs.ErrInvalidArgument] if c holds
// a value the plugin does not know.
func (c *Config) Validate() error {
	switch c.ContentSharingPolicy {
	case SharingShared, SharingIsolated:
		return nil
	}
	return fmt.Errorf("plugins.bolt: content_sharing_policy %q must be %q or %q: %w",
		c.ContentSharingPolicy, SharingShared, SharingIsolated, errdefs.ErrInvalidArgument)
}

// Plugin is the metadata plugin, io.containerd.metadata.v1.bolt.
var Plugin = pluginkit.Plugin{
	Type:   "io.containerd.metadata.v1",
	ID:     "bolt",
	Config: func() any { return &Config{ContentSharingPolicy: SharingShared} },
	Init:   initPlugin,
}

// initPlugin opens the database in the plugin's root and registers the
// services on it.
func initPlugin(ctx context.Context, ic *pluginkit.InitContext) error {
	cfg, ok := ic.Config.(*Config)
	if !ok || cfg == nil {
		return fmt.Errorf("init metadata plugin: config is %T, not *Config: %w",
			ic.Config, errdefs.ErrInvalidArgument)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	if err := os.MkdirAll(ic.Root, 0o700); err != nil {
		return fmt.Errorf("create metadata root %q: %w", ic.Root, err)
	}
	db, err := metadata.Open(filepath.Join(ic.Root, DBName), metadata.WithLogger(ic.Log))
	if err != nil {
		return err
	}
	ic.OnClose(db.Close)

	blobs := contentapi.NewContentClient(ic.Dial(ContentPluginID))
	gc, err := startGC(ic, db, blobs)
	if err != nil {
		return err
	}

	NewNamespaces(db.Namespaces(), ic.Events, ic.Log).Register(ic.Server)
	NewImages(db.Images(), ic.Events, gc, ic.Log).Register(ic.Server)
	NewContainers(db.Containers(), ic.Events, gc, ic.Log).Register(ic.Server)
	content := NewContent(ContentConfig{
		Store:  db.Content(),
		Blobs:  blobs,
		GC:     gc,
		Events: ic.Events,
		Policy: cfg.ContentSharingPolicy,
		Log:    ic.Log,
	})
	content.Register(ic.Server)
	NewIngests(content).Register(ic.Server)
	NewLeases(db.Leases(), gc, ic.Log).Register(ic.Server)
	ic.Log.Info().Msgf("metadata db open, content sharing %s", cfg.ContentSharingPolicy)
	return nil
}
