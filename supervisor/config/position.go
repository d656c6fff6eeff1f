package config

import (
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineIndex maps each key of a document to the line that sets it or opens
// its table. The TOML decoder reports lines for syntax and type errors only,
// so unknown keys and bad values are found here, one line at a time. It is
// a best effort for messages: keys inside multi-line values, or quoted keys
// holding "=", are not found.
type lineIndex map[string]int

// indexLines reads doc a line at a time.
func indexLines(doc string) lineIndex {
	idx := make(lineIndex)
	var table toml.Key
	for i, line := range strings.Split(doc, "\n") {
		k, header := lineKey(line)
		if k == nil {
			continue
		}
		if header {
			table = k
		} else {
			k = append(slices.Clone(table), k...)
		}
		if _, ok := idx[k.String()]; !ok {
			idx[k.String()] = i + 1
		}
	}
	return idx
}

// line returns the line of key, or else of the nearest enclosing table or
// dotted key found; 0 when there is none.
func (idx lineIndex) line(key toml.Key) int {
	for n := len(key); n > 0; n-- {
		if line, ok := idx[key[:n].String()]; ok {
			return line
		}
	}
	return 0
}

// lineKey returns the key a line sets, or the table a header line opens.
func lineKey(line string) (key toml.Key, header bool) {
	s := strings.TrimSpace(line)
	switch {
	case s == "" || s[0] == '#':
		return nil, false
	case s[0] == '[':
		return decodeKey(s), true
	}
	eq := strings.IndexByte(s, '=')
	if eq <= 0 {
		return nil, false
	}
	return decodeKey(s[:eq] + "= 0"), false
}

// decodeKey parses a one-line TOML fragment and returns its last key.
func decodeKey(fragment string) toml.Key {
	var m map[string]any
	md, err := toml.Decode(fragment, &m)
	if err != nil {
		return nil
	}
	keys := md.Keys()
	if len(keys) == 0 {
		return nil
	}
	return keys[len(keys)-1]
}
