package config

import (
	"bytes"
	"fmt"
	"io"

	"github.com/BurntSushi/toml"
)

// WriteTo writes c as a complete TOML document: every setting and every
// plugin's section, by full id. Load reads it back into an equal Config.
func (c *Config) WriteTo(w io.Writer) (int64, error) {
	out := struct {
		Config
		Plugins map[string]map[string]any `toml:"plugins"`
	}{Config: *c, Plugins: make(map[string]map[string]any, len(c.Plugins))}

	for id, pc := range c.Plugins {
		m := make(map[string]any)
		if _, err := toml.Decode(pc.Section, &m); err != nil {
			return 0, fmt.Errorf("write config: section of plugin %s: %w", id, err)
		}
		if pc.Path != "" {
			m["path"] = pc.Path
		}
		out.Plugins[id] = m
	}

	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(out); err != nil {
		return 0, fmt.Errorf("write config: %w", err)
	}
	return buf.WriteTo(w)
}
