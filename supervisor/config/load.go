package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"corral.dev/pluginkit"
)

// Load reads the configuration file at path for a build with plugins, and
// returns it with warnings about what was ignored. A missing file gives the
// defaults, unless mustExist says the user named it. Every problem in the
// file wraps errdefs.ErrInvalidArgument; a missing file that must exist
// wraps errdefs.ErrNotFound.
func Load(path string, mustExist bool, plugins []pluginkit.Plugin) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !mustExist:
		return Default(plugins), nil, nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("read config: %w: %w", err, errdefs.ErrNotFound)
	case err != nil:
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	c, warnings, err := Parse(data, plugins)
	if err != nil {
		return nil, warnings, fmt.Errorf("config %s: %w", path, err)
	}
	return c, warnings, nil
}

// Parse reads a configuration document for a build with plugins, as Load
// does with a file's contents.
func Parse(data []byte, plugins []pluginkit.Plugin) (*Config, []string, error) {
	p := &parser{doc: string(data), plugins: plugins}
	c, err := p.parse()
	if err != nil {
		return nil, p.warnings, err
	}
	return c, p.warnings, nil
}

// document is the shape of the file: the settings, plus the plugin sections
// left undecoded until their plugin is known.
type document struct {
	Config
	Plugins map[string]toml.Primitive `toml:"plugins"`
	// Sections of containerd's that this daemon has no use for.
	ProxyPlugins     map[string]toml.Primitive `toml:"proxy_plugins"`
	StreamProcessors map[string]toml.Primitive `toml:"stream_processors"`
}

// parser holds what one Parse learns on the way.
type parser struct {
	doc      string
	plugins  []pluginkit.Plugin
	md       toml.MetaData
	lines    lineIndex
	warnings []string
	// ignored are the sections of plugins this build does not have.
	ignored []toml.Key
}

func (p *parser) parse() (*Config, error) {
	def := Default(p.plugins)
	doc := document{Config: *def}
	md, err := toml.Decode(p.doc, &doc)
	if err != nil {
		return nil, p.decodeError(err)
	}
	p.md = md

	// Plugin sections first, so that their keys count as decoded.
	sections, err := p.pluginSections(doc.Plugins)
	if err != nil {
		return nil, err
	}
	if err := p.containerdSections(&doc); err != nil {
		return nil, err
	}
	if err := p.unknownKeys(); err != nil {
		return nil, err
	}

	c := doc.Config
	c.Plugins = def.Plugins
	for id, pc := range sections {
		c.Plugins[id] = pc
	}
	c.normalize()
	if err := p.check(c.problems()); err != nil {
		return nil, err
	}
	if err := p.checkRequired(&c); err != nil {
		return nil, err
	}
	p.warnDisabled(&c)
	p.warnUnused(&c)
	return &c, nil
}

// pluginSections decodes each [plugins.<id>] section onto its plugin's
// defaults, and returns the results by full id.
func (p *parser) pluginSections(prims map[string]toml.Primitive) (map[string]PluginConfig, error) {
	names := sortedKeys(prims)
	out := make(map[string]PluginConfig, len(names))
	seen := make(map[string]string, len(names))
	for _, name := range names {
		key := toml.Key{"plugins", name}
		found := matchPlugins(p.plugins, name)
		switch {
		case len(found) == 0:
			p.warnf("%s: no such plugin in this build; section ignored", p.where(key))
			p.ignored = append(p.ignored, key)
			continue
		case len(found) > 1:
			return nil, p.errorf(key, "short id %q is shared by %s and %s; use the full id",
				name, found[0].FullID(), found[1].FullID())
		}
		if typ := p.md.Type(key...); typ != "Hash" && typ != "" {
			return nil, p.errorf(key, "%s must be a table, not %s", key, strings.ToLower(typ))
		}
		pl := found[0]
		if prev, ok := seen[pl.FullID()]; ok {
			return nil, p.errorf(key, "plugin %s is configured twice, as %s and %s",
				pl.FullID(), toml.Key{"plugins", prev}, key)
		}
		seen[pl.FullID()] = name

		pc, err := p.pluginSection(pl, prims[name])
		if err != nil {
			return nil, err
		}
		out[pl.FullID()] = pc
	}
	return out, nil
}

// pluginSection takes the host's key out of one plugin section and decodes
// the rest onto the plugin's defaults.
func (p *parser) pluginSection(pl pluginkit.Plugin, prim toml.Primitive) (PluginConfig, error) {
	var host struct {
		Path string `toml:"path"`
	}
	if err := p.md.PrimitiveDecode(prim, &host); err != nil {
		return PluginConfig{}, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	var cfg any
	if pl.Config != nil {
		cfg = pl.Config()
		if err := p.md.PrimitiveDecode(prim, cfg); err != nil {
			return PluginConfig{}, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
	}

	// The text is what the plugin process decodes: check that it does.
	section, err := encodeSection(cfg)
	if err != nil {
		return PluginConfig{}, fmt.Errorf("encode plugins.%s: %w", pl.ID, err)
	}
	if _, err := pluginkit.DecodeConfig(pl, section); err != nil {
		return PluginConfig{}, err
	}
	return PluginConfig{Type: pl.Type, ID: pl.ID, Path: host.Path, Section: section}, nil
}

// containerdSections refuses proxy plugins, which would leave a service
// missing, and ignores stream processors with a warning.
func (p *parser) containerdSections(doc *document) error {
	if names := sortedKeys(doc.ProxyPlugins); len(names) > 0 {
		key := toml.Key{"proxy_plugins", names[0]}
		msg := "proxy plugins are not supported; give the plugin a [plugins.<id>] path instead"
		return p.errorf(key, "%s: %s", key, msg)
	}
	for _, name := range sortedKeys(doc.StreamProcessors) {
		key := toml.Key{"stream_processors", name}
		p.warnf("%s: stream processors are not supported; section ignored", p.where(key))
		p.ignored = append(p.ignored, key)
	}
	return nil
}

// unknownKeys reports every key nothing decoded, outside the sections of
// plugins this build does not have. A table is reported, not its contents.
func (p *parser) unknownKeys() error {
	var reported []toml.Key
	var msgs []string
	for _, k := range p.md.Undecoded() {
		if under(k, p.ignored) || under(k, reported) {
			continue
		}
		reported = append(reported, k)
		msgs = append(msgs, fmt.Sprintf("%sunknown key %s", p.linePrefix(k), quoteKey(k)))
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), errdefs.ErrInvalidArgument)
}

// decodeError words a syntax error with its line and column, counted from
// the error's offset: the decoder's own line is one too far when the
// offending character is the newline that ends a line ("[grpc" unclosed).
func (p *parser) decodeError(err error) error {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	line, col := pe.Position.Line, pe.Position.Col
	if start := pe.Position.Start; start > 0 && start <= len(p.doc) {
		line = 1 + strings.Count(p.doc[:start], "\n")
		col = start - strings.LastIndexByte(p.doc[:start], '\n')
	}
	msg := fmt.Sprintf("line %d, column %d: %s", line, col, pe.Message)
	if pe.LastKey != "" {
		msg += fmt.Sprintf(" (key %s)", pe.LastKey)
	}
	return fmt.Errorf("%s: %w", msg, errdefs.ErrInvalidArgument)
}

// check turns the problems of a decoded config into one error, with lines.
func (p *parser) check(probs []problem) error {
	if len(probs) == 0 {
		return nil
	}
	msgs := make([]string, len(probs))
	for i, pr := range probs {
		msgs[i] = p.linePrefix(pr.key) + pr.String()
	}
	return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), errdefs.ErrInvalidArgument)
}

// checkRequired makes sure every required plugin is built in and enabled.
func (p *parser) checkRequired(c *Config) error {
	key := toml.Key{"required_plugins"}
	for _, name := range c.RequiredPlugins {
		pl, ok := ResolvePluginID(p.plugins, name)
		if !ok {
			return p.errorf(key, "required_plugins: no plugin %q in this build", name)
		}
		if c.Disabled(pl) {
			return p.errorf(key, "required_plugins: %q is also in disabled_plugins", name)
		}
	}
	return nil
}

// warnUnused warns about containerd settings that this daemon ignores.
func (p *parser) warnUnused(c *Config) {
	unused := []struct {
		key   toml.Key
		value string
	}{
		{toml.Key{"temp"}, c.Temp},
		{toml.Key{"plugin_dir"}, c.PluginDir},
		{toml.Key{"cgroup", "path"}, c.Cgroup.Path},
	}
	for _, u := range unused {
		if u.value != "" {
			p.warnf("%s: not used by this daemon; ignored", p.where(u.key))
		}
	}
}

// warnDisabled warns about disabled_plugins entries that name no plugin.
func (p *parser) warnDisabled(c *Config) {
	for _, name := range c.DisabledPlugins {
		if len(matchPlugins(p.plugins, name)) == 0 {
			p.warnf("disabled_plugins: no plugin %q in this build", name)
		}
	}
}

func (p *parser) warnf(format string, args ...any) {
	p.warnings = append(p.warnings, fmt.Sprintf(format, args...))
}

// errorf returns an invalid-argument error about key, with its line.
func (p *parser) errorf(key toml.Key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return fmt.Errorf("%s%s: %w", p.linePrefix(key), msg, errdefs.ErrInvalidArgument)
}

// line returns the line of key, or 0; the index is built on first use.
func (p *parser) line(key toml.Key) int {
	if p.lines == nil {
		p.lines = indexLines(p.doc)
	}
	return p.lines.line(key)
}

// where names key and, when it can be found, its line.
func (p *parser) where(key toml.Key) string {
	if line := p.line(key); line > 0 {
		return fmt.Sprintf("line %d: %s", line, key)
	}
	return key.String()
}

// linePrefix is "line N: " for a key whose line can be found, else empty.
func (p *parser) linePrefix(key toml.Key) string {
	if line := p.line(key); line > 0 {
		return fmt.Sprintf("line %d: ", line)
	}
	return ""
}

// encodeSection writes a plugin configuration as TOML text; nil is empty.
func encodeSection(cfg any) (string, error) {
	if cfg == nil {
		return "", nil
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// sortedKeys returns the names of a document's sections in order.
func sortedKeys(m map[string]toml.Primitive) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// under reports whether k is one of tables or inside one of them.
func under(k toml.Key, tables []toml.Key) bool {
	for _, t := range tables {
		if len(k) >= len(t) && equalKeys(k[:len(t)], t) {
			return true
		}
	}
	return false
}

func equalKeys(a, b toml.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// quoteKey quotes a dotted key for a message, unless it holds quotes of its
// own (plugins."io.containerd.grpc.v1.cri").
func quoteKey(k toml.Key) string {
	s := k.String()
	if strings.Contains(s, `"`) {
		return s
	}
	return `"` + s + `"`
}
