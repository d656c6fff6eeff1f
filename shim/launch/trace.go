package launch

import (
	"context"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/rs/zerolog"
)

// traceRequests logs each task API call at debug level with its duration.
func traceRequests(log zerolog.Logger) ttrpc.UnaryServerInterceptor {
	return func(
		ctx context.Context,
		unmarshal ttrpc.Unmarshaler,
		info *ttrpc.UnaryServerInfo,
		method ttrpc.Method,
	) (any, error) {
		if log.GetLevel() > zerolog.DebugLevel {
			return method(ctx, unmarshal)
		}
		start := time.Now()
		resp, err := method(ctx, unmarshal)
		log.Debug().Str("method", info.FullMethod).Dur("took", time.Since(start)).Err(err).Msg("request")
		return resp, err
	}
}
