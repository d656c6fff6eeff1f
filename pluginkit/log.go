package pluginkit

import (
	"io"
	"time"

	"github.com/rs/zerolog"
)

// Field names of a plugin's JSON log lines. They are the ones go-plugin's
// host recognises, so the supervisor can re-emit each line at its level.
const (
	LogLevelField   = "@level"
	LogMessageField = "@message"
	LogTimeField    = "@timestamp"
)

func init() {
	zerolog.LevelFieldName = LogLevelField
	zerolog.MessageFieldName = LogMessageField
	zerolog.TimestampFieldName = LogTimeField
	zerolog.ErrorFieldName = "error"
	zerolog.TimeFieldFormat = time.RFC3339Nano
}

// NewLogger returns a JSON logger for a plugin process writing to w, at the
// named level ("info" when empty or unknown).
func NewLogger(w io.Writer, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}
