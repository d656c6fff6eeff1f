package host

import (
	"bytes"
	"encoding/json"
	"sync"

	"github.com/rs/zerolog"

	"corral.dev/pluginkit"
)

// logRelay re-emits a plugin's JSON log lines through the supervisor's
// logger, each at its own level and tagged with the plugin id. A line that is
// not JSON (a panic, say) is logged as it is, at error level.
type logRelay struct {
	log zerolog.Logger
	mu  sync.Mutex
	buf []byte
}

func (l *logRelay) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *logRelay) emit(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var fields map[string]any
	if line[0] != '{' || json.Unmarshal(line, &fields) != nil {
		l.log.Error().Str("output", string(line)).Msg("plugin output")
		return
	}
	level, err := zerolog.ParseLevel(str(fields[pluginkit.LogLevelField]))
	if err != nil || level == zerolog.NoLevel {
		level = zerolog.InfoLevel
	}
	msg := str(fields[pluginkit.LogMessageField])
	delete(fields, pluginkit.LogLevelField)
	delete(fields, pluginkit.LogMessageField)
	delete(fields, pluginkit.LogTimeField)
	delete(fields, "plugin")
	l.log.WithLevel(level).Fields(fields).Msg(msg)
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
