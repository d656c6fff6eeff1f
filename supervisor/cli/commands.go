package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"corral.dev/pluginkit"
	adminv1 "corral.dev/proto/admin/v1"
	"corral.dev/supervisor/config"
)

func configCommand(plugins []pluginkit.Plugin) *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "Information on the containerd config",
		Subcommands: []*cli.Command{
			{
				Name:  "default",
				Usage: "See the output of the default config",
				Action: func(c *cli.Context) error {
					_, err := config.Default(plugins).WriteTo(c.App.Writer)
					return err
				},
			},
			{
				Name:  "dump",
				Usage: "See the output of the final main config with imported in subconfig files",
				Action: func(c *cli.Context) error {
					cfg, err := loadConfig(c, plugins, nil)
					if err != nil {
						return err
					}
					_, err = cfg.WriteTo(c.App.Writer)
					return err
				},
			},
		},
	}
}

func pluginsCommand(plugins []pluginkit.Plugin) *cli.Command {
	return &cli.Command{
		Name:  "plugins",
		Usage: "List, restart or upgrade the plugin processes of a running daemon",
		Subcommands: []*cli.Command{
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "List the plugin processes and their state",
				Action: func(c *cli.Context) error {
					return withAdmin(c, plugins, listPlugins)
				},
			},
			{
				Name:      "restart",
				Usage:     "Drain a plugin and start it again; calls wait meanwhile",
				ArgsUsage: "ID",
				Action: func(c *cli.Context) error {
					return withAdmin(c, plugins, func(ctx context.Context, a adminv1.AdminClient) error {
						return restartPlugin(ctx, a, c.Args().First(), "")
					})
				},
			},
			{
				Name:      "upgrade",
				Usage:     "Restart a plugin from a new binary",
				ArgsUsage: "ID PATH",
				Action: func(c *cli.Context) error {
					return withAdmin(c, plugins, func(ctx context.Context, a adminv1.AdminClient) error {
						return restartPlugin(ctx, a, c.Args().Get(0), c.Args().Get(1))
					})
				},
			},
		},
	}
}

// withAdmin connects to the running daemon's socket and runs fn.
func withAdmin(c *cli.Context, plugins []pluginkit.Plugin, fn func(context.Context, adminv1.AdminClient) error) error {
	cfg, err := loadConfig(c, plugins, nil)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient("unix://"+cfg.GRPC.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.GRPC.Address, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Minute)
	defer cancel()
	return fn(ctx, adminv1.NewAdminClient(cc))
}

func listPlugins(ctx context.Context, a adminv1.AdminClient) error {
	resp, err := a.ListPlugins(ctx, &adminv1.ListPluginsRequest{})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 4, 8, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTYPE\tSTATE\tPID\tRESTARTS\tLAST ERROR")
	for _, p := range resp.Plugins {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", p.Id, p.Type, p.State, p.Pid, p.Restarts, p.LastError)
	}
	return w.Flush()
}

func restartPlugin(ctx context.Context, a adminv1.AdminClient, id, path string) error {
	if id == "" {
		return fmt.Errorf("name the plugin to restart")
	}
	resp, err := a.RestartPlugin(ctx, &adminv1.RestartPluginRequest{Id: id, Path: path})
	if err != nil {
		return err
	}
	fmt.Printf("%s %s pid %d\n", resp.Plugin.Id, resp.Plugin.State, resp.Plugin.Pid)
	return nil
}
