// Package filters parses and evaluates the filter language that containerd
// clients put in the filters field of List, Subscribe and Plugins requests.
//
// A filter is a comma-separated list of selectors, all of which must match.
// A request that carries several filters matches when any one of them does
// (see [ParseAll]). Each selector names a field path and, optionally, an
// operator and a value:
//
//	name==redis                       field equals value
//	labels."com.example/tier"!=db     field differs from value
//	image~=^docker\.io/library/       field matches a Go regular expression
//	labels.env                        field is present
//	type==io.containerd.snapshotter.v1, id==overlayfs
//
// The grammar, with whitespace allowed between any two tokens:
//
//	filter    = "" | selector { "," selector }
//	selector  = fieldpath [ operator value ]
//	fieldpath = field { "." field }
//	field     = name | dquoted
//	name      = 1*( "A"-"Z" | "a"-"z" | "0"-"9" | "_" )
//	operator  = "==" | "!=" | "~="
//	value     = bare | dquoted | slashed | piped
//	bare      = first rune not a space nor one of `,"/|=!~`, then
//	            graphic runes other than "," and spaces
//	dquoted   = `"` ... `"`
//	slashed   = "/" ... "/"     (only after "~=")
//	piped     = "|" ... "|"     (only after "~=")
//
// Quoted strings use Go's escapes: \a \b \f \n \r \t \v \\, \ooo (octal),
// \xhh, \uhhhh, \Uhhhhhhhh and a backslash before the closing delimiter.
// Any other escape is an error, so a regular expression such as \d must be
// written \\d inside quotes, or left bare. Single quotes and backquotes are
// not delimiters: they are ordinary characters of a bare value.
//
// The filter never interprets field paths itself: an [Adaptor] maps each
// path to the value of the object being matched.
package filters

import (
	"fmt"
	"regexp"
	"strings"
)

// Filter reports whether an object, seen through an [Adaptor], matches.
type Filter interface {
	Match(a Adaptor) bool
}

// Adaptor exposes the fields of one object to a [Filter]. Field returns the
// value at fieldpath and whether the object has that field; the adaptor
// decides what "present" means for its type (a label that is set, a name
// that is not empty).
type Adaptor interface {
	Field(fieldpath []string) (value string, present bool)
}

// AdapterFunc lets a plain function serve as an [Adaptor].
type AdapterFunc func(fieldpath []string) (value string, present bool)

// Field calls fn(fieldpath).
func (fn AdapterFunc) Field(fieldpath []string) (string, bool) {
	return fn(fieldpath)
}

// FilterFunc lets a plain function serve as a [Filter].
type FilterFunc func(a Adaptor) bool

// Match calls fn(a).
func (fn FilterFunc) Match(a Adaptor) bool {
	return fn(a)
}

// All matches an object when every one of its filters does. An empty All
// matches everything.
type All []Filter

// Match reports whether all filters in m match a.
func (m All) Match(a Adaptor) bool {
	for _, f := range m {
		if !f.Match(a) {
			return false
		}
	}
	return true
}

// String returns the filters joined by commas; for a parsed filter this is
// a canonical form that parses back to the same filter.
func (m All) String() string {
	parts := make([]string, len(m))
	for i, f := range m {
		parts[i] = fmt.Sprint(f)
	}
	return strings.Join(parts, ",")
}

// Any matches an object when at least one of its filters does. An empty Any
// matches nothing.
type Any []Filter

// Match reports whether any filter in m matches a.
func (m Any) Match(a Adaptor) bool {
	for _, f := range m {
		if f.Match(a) {
			return true
		}
	}
	return false
}

// Always matches every object. It is what an empty filter string parses to.
var Always Filter = All{}

// operator is the comparison a selector applies to its field.
type operator int

const (
	opPresent  operator = iota // field is present
	opEqual                    // ==
	opNotEqual                 // !=
	opMatch                    // ~=
)

func (op operator) String() string {
	switch op {
	case opEqual:
		return "=="
	case opNotEqual:
		return "!="
	case opMatch:
		return "~="
	}
	return ""
}

// selector is one comparison of a field path against a value.
type selector struct {
	path  []string
	op    operator
	value string
	re    *regexp.Regexp // compiled value, for opMatch only
}

// Match follows containerd: "==" needs the field to be present, while "!="
// and "~=" compare whatever value the adaptor returns for a missing field
// (normally the empty string).
func (s selector) Match(a Adaptor) bool {
	value, present := a.Field(s.path)
	switch s.op {
	case opPresent:
		return present
	case opEqual:
		return present && value == s.value
	case opNotEqual:
		return value != s.value
	case opMatch:
		return s.re.MatchString(value)
	}
	return false
}

// String returns the selector in canonical syntax: path components and
// values are bare where the grammar allows it and double-quoted otherwise.
func (s selector) String() string {
	var b strings.Builder
	for i, field := range s.path {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(quoteField(field))
	}
	if s.op == opPresent {
		return b.String()
	}
	b.WriteString(s.op.String())
	b.WriteString(quoteValue(s.value))
	return b.String()
}
