package launch

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"corral.dev/shim/publish"
	"corral.dev/shim/reaper"
	"corral.dev/shim/task"
)

// serve is the long-lived shim: it serves the task API on the socket start
// passed as fd 3 until the daemon shuts it down. Its stderr goes nowhere,
// so a failure is logged.
func serve(f *flags) error {
	log := openLog(f)
	if err := serveLogged(f, log); err != nil {
		log.Error().Err(err).Msg("shim failed")
		return err
	}
	return nil
}

// serveLogged does the work of serve.
func serveLogged(f *flags, log zerolog.Logger) error {
	// A write to a pipe whose reader left must fail, not kill the shim;
	// a caught (not ignored) signal is reset for runc and the container.
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, unix.SIGPIPE)
	go func() {
		for range pipes {
		}
	}()

	if err := reaper.Default.Start(); err != nil {
		return err
	}
	opts, err := readOptions(os.Stdin)
	if err != nil {
		log.Warn().Err(err).Msg("ignore runtime options")
	}
	l, err := net.FileListener(os.NewFile(3, "socket"))
	if err != nil {
		return fmt.Errorf("socket from start: %w", err)
	}

	ctx, stop := context.WithCancel(context.Background())
	pub := publish.New(f.ttrpcAddress, f.namespace, log)
	svc := task.New(task.Config{
		Namespace:      f.namespace,
		RuntimeOptions: opts,
		Publisher:      pub,
		Log:            log,
		Exit:           stop,
	}, reaper.Default)
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(traceRequests(log)))
	if err != nil {
		return fmt.Errorf("create ttrpc server: %w", err)
	}
	taskapi.RegisterTTRPCTaskService(srv, svc)
	go func() {
		if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
			log.Error().Err(err).Msg("serve task api")
			stop()
		}
	}()
	log.Info().Int("pid", os.Getpid()).Msg("shim started")

	<-ctx.Done()
	return shutdown(srv, pub, f, log)
}

// shutdown delivers pending events, closes the server and the socket.
func shutdown(srv *ttrpc.Server, pub *publish.Publisher, f *flags, log zerolog.Logger) error {
	ctx, cancel := withTimeout(10 * time.Second)
	defer cancel()
	if err := pub.Flush(ctx); err != nil {
		log.Error().Err(err).Msg("events not delivered before exit")
	}
	_ = os.Remove(socketPath(f.ttrpcAddress, f.namespace, f.id))
	sctx, scancel := withTimeout(time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	log.Info().Msg("shim exited")
	return nil
}
