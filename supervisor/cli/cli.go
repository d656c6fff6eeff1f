// Package cli is the containerd command line: flags and subcommands as the
// containerd ops guide shows them, plus the operator commands for plugins.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"corral.dev/pluginkit"
	"corral.dev/supervisor/config"
	"corral.dev/supervisor/daemon"
	"corral.dev/supervisor/gotune"
	"corral.dev/supervisor/placement"
	"corral.dev/supervisor/version"
)

// banner is the figlet (slant) rendering of the binary's name.
const banner = `
                    __        _                     __
  _________  ____  / /_____ _(_)___  ___  _________/ /
 / ___/ __ \/ __ \/ __/ __ ` + "`" + `/ / __ \/ _ \/ ___/ __  /
/ /__/ /_/ / / / / /_/ /_/ / / / / /  __/ /  / /_/ /
\___/\____/_/ /_/\__/\__,_/_/_/ /_/\___/_/   \__,_/

container daemon made of restartable plugin processes
`

// defaultConfigPath is read when --config is not given; its absence means defaults.
const defaultConfigPath = "/etc/containerd/config.toml"

// Run runs the command line with args (os.Args) over the plugins this build links.
func Run(args []string, plugins []pluginkit.Plugin) error {
	return newApp(plugins).Run(args)
}

func newApp(plugins []pluginkit.Plugin) *cli.App {
	app := &cli.App{
		Name:    "containerd",
		Usage:   banner,
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: defaultConfigPath,
				Usage: "path to the configuration file"},
			&cli.StringFlag{Name: "log-level", Aliases: []string{"l"},
				Usage: "set the logging level [trace, debug, info, warn, error, fatal, panic]"},
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Usage: "address of the public gRPC socket"},
			&cli.StringFlag{Name: "root", Usage: "directory for persistent data"},
			&cli.StringFlag{Name: "state", Usage: "directory for runtime data"},
		},
		Commands: []*cli.Command{
			configCommand(plugins),
			pluginsCommand(plugins),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unknown command %q (see --help)", c.Args().First())
			}
			return serve(c, plugins)
		},
	}
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintln(c.App.Writer, c.App.Name, version.Package, version.Version, version.Revision)
	}
	return app
}

// loadConfig reads the configuration file and applies the global flags.
func loadConfig(c *cli.Context, plugins []pluginkit.Plugin, log *zerolog.Logger) (*config.Config, error) {
	path := c.String("config")
	cfg, warnings, err := config.Load(path, c.IsSet("config"), plugins)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		if log != nil {
			log.Warn().Str("config", path).Msg(w)
		}
	}
	if v := c.String("address"); v != "" {
		cfg.GRPC.Address = v
	}
	if v := c.String("root"); v != "" {
		cfg.Root = v
	}
	if v := c.String("state"); v != "" {
		cfg.State = v
	}
	if v := c.String("log-level"); v != "" {
		cfg.Debug.Level = v
	}
	return cfg, cfg.Validate()
}

func serve(c *cli.Context, plugins []pluginkit.Plugin) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	// The settings of package gotune apply from the process's start: the
	// configuration is read quietly first, and again with its warnings by
	// the process that serves.
	cfg, err := loadConfig(c, plugins, nil)
	if err != nil {
		return err
	}
	// The CPUs are picked before the re-exec, so that the new image's Go
	// runtime sizes itself to them from its start; plugins inherit them.
	host, cpus, err := placement.Place(cfg.PluginHost.CPUAffinity)
	if err != nil {
		return fmt.Errorf("plugin_host.cpu_affinity: %w", err)
	}
	var reexecErr error
	if cfg.PluginHost.SysmonAwake {
		reexecErr = gotune.Reexec(exe)
	}
	log := newLogger(os.Stderr, "info", "text")
	if cfg, err = loadConfig(c, plugins, &log); err != nil {
		return err
	}
	log = newLogger(os.Stderr, cfg.Debug.Level, cfg.Debug.Format)
	if reexecErr != nil {
		log.Warn().Err(reexecErr).Msg("running with the runtime monitor parking when idle")
	}
	if cpus != nil {
		log.Info().Str("cpus", placement.FormatList(cpus)).Str("host_cpus", placement.FormatList(host)).
			Msg("supervisor and plugins run on a share of the CPUs (plugin_host.cpu_affinity)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info().Str("version", version.Version).Str("revision", version.Revision).Msg("starting containerd")
	return daemon.Run(ctx, cfg, daemon.Options{
		Plugins:    plugins,
		Executable: exe,
		LogLevel:   cfg.Debug.Level,
		Log:        log,
	})
}

// newLogger returns the supervisor's logger: human-readable text or JSON.
func newLogger(w io.Writer, level, format string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	if format != "json" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "2006-01-02T15:04:05.000000000Z07:00", NoColor: true}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}
