package host

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/rs/zerolog"
)

func TestLogRelayKeepsLevelAndFields(t *testing.T) {
	var out bytes.Buffer
	r := &logRelay{log: zerolog.New(&out).With().Str("plugin", "bolt").Logger()}

	// Lines may arrive split across writes.
	r.Write([]byte(`{"@level":"warn","@message":"disk slow","@timestamp":"x","key":"k1"}` + "\n" + `{"@level":"de`))
	r.Write([]byte(`bug","@message":"get"}` + "\npanic: boom\n"))

	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("relay wrote %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	want := []struct{ level, msg string }{{"warn", "disk slow"}, {"debug", "get"}, {"error", "plugin output"}}
	if len(lines) != len(want) {
		t.Fatalf("relay wrote %d lines, want %d: %s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if lines[i][zerolog.LevelFieldName] != w.level || lines[i][zerolog.MessageFieldName] != w.msg {
			t.Errorf("line %d = %v, want level %s message %q", i, lines[i], w.level, w.msg)
		}
		if lines[i]["plugin"] != "bolt" {
			t.Errorf("line %d lost its plugin field: %v", i, lines[i])
		}
	}
	if lines[0]["key"] != "k1" {
		t.Errorf("fields not carried: %v", lines[0])
	}
	if lines[2]["output"] != "panic: boom" {
		t.Errorf("raw output not kept: %v", lines[2])
	}
}
