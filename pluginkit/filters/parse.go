package filters

import (
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// SyntaxError describes why and where a filter string failed to parse. It
// wraps [errdefs.ErrInvalidArgument].
type SyntaxError struct {
	Filter string // the filter string as received
	Offset int    // byte offset of the problem in Filter
	Msg    string // what is wrong, without the location
}

// Error returns the message with the filter and the offending offset.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("parse filter %q at offset %d: %s: %v",
		e.Filter, e.Offset, e.Msg, errdefs.ErrInvalidArgument)
}

// Unwrap returns [errdefs.ErrInvalidArgument], so that errdefs.IsInvalidArgument
// holds for every parse error.
func (e *SyntaxError) Unwrap() error {
	return errdefs.ErrInvalidArgument
}

// Parse parses one filter string: a comma-separated list of selectors that
// must all match. The empty string parses to [Always]. Errors are
// [*SyntaxError] values.
func Parse(s string) (Filter, error) {
	if s == "" {
		return Always, nil
	}
	p := parser{in: s}
	if err := p.checkEncoding(); err != nil {
		return nil, err
	}
	return p.conjunction()
}

// ParseAll parses the filters of one request, which match an object when
// any of them does. With no filters, or with an empty one among them, the
// result matches everything. Every filter must parse; the first error is
// returned as is.
func ParseAll(ss ...string) (Filter, error) {
	var (
		or    Any
		empty = len(ss) == 0
	)
	for _, s := range ss {
		f, err := Parse(s)
		if err != nil {
			return nil, err
		}
		empty = empty || s == ""
		or = append(or, f)
	}
	if empty {
		return Always, nil
	}
	if len(or) == 1 {
		return or[0], nil
	}
	return or, nil
}

// parser reads one filter string. pos is the byte offset of the next
// unread rune.
type parser struct {
	in  string
	pos int
}

func (p *parser) errorf(offset int, format string, args ...any) error {
	return &SyntaxError{Filter: p.in, Offset: offset, Msg: fmt.Sprintf(format, args...)}
}

// checkEncoding rejects input that is not UTF-8 or that holds a NUL, which
// containerd refuses as well.
func (p *parser) checkEncoding() error {
	for i, r := range p.in {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(p.in[i:]); size == 1 {
				return p.errorf(i, "invalid UTF-8")
			}
		}
		if r == 0 {
			return p.errorf(i, "unexpected NUL")
		}
	}
	return nil
}

func (p *parser) eof() bool {
	return p.pos >= len(p.in)
}

// peek returns the next rune without consuming it, or -1 at the end.
func (p *parser) peek() rune {
	if p.eof() {
		return -1
	}
	r, _ := utf8.DecodeRuneInString(p.in[p.pos:])
	return r
}

func (p *parser) skipSpace() {
	for !p.eof() {
		r, size := utf8.DecodeRuneInString(p.in[p.pos:])
		if !unicode.IsSpace(r) {
			return
		}
		p.pos += size
	}
}

// describe names the next rune for an error message.
func (p *parser) describe() string {
	if p.eof() {
		return "end of filter"
	}
	return fmt.Sprintf("%q", p.peek())
}

func (p *parser) conjunction() (All, error) {
	var all All
	for {
		sel, err := p.selector()
		if err != nil {
			return nil, err
		}
		all = append(all, sel)

		p.skipSpace()
		if p.eof() {
			return all, nil
		}
		if p.peek() != ',' {
			return nil, p.errorf(p.pos, `expected "," or end of filter, found %s`, p.describe())
		}
		p.pos++
	}
}

func (p *parser) selector() (selector, error) {
	path, err := p.fieldpath()
	if err != nil {
		return selector{}, err
	}

	p.skipSpace()
	if p.eof() || p.peek() == ',' {
		return selector{path: path, op: opPresent}, nil
	}
	op, err := p.operator()
	if err != nil {
		return selector{}, err
	}

	p.skipSpace()
	start := p.pos
	value, err := p.value(op)
	if err != nil {
		return selector{}, err
	}
	sel := selector{path: path, op: op, value: value}
	if op == opMatch {
		// containerd defers compiling to Match and then matches nothing;
		// telling the client is more useful.
		if sel.re, err = regexp.Compile(value); err != nil {
			return selector{}, p.errorf(start, "invalid regular expression: %v", err)
		}
	}
	return sel, nil
}

func (p *parser) fieldpath() ([]string, error) {
	var path []string
	for {
		p.skipSpace()
		field, err := p.field()
		if err != nil {
			return nil, err
		}
		path = append(path, field)

		p.skipSpace()
		if p.peek() != '.' {
			return path, nil
		}
		p.pos++
	}
}

func (p *parser) field() (string, error) {
	start := p.pos
	switch r := p.peek(); {
	case r == '"':
		return p.quoted()
	case r == '/' || r == '|':
		return "", p.errorf(start, "field names may only be quoted with %q", '"')
	case !isNameRune(r):
		return "", p.errorf(start, "expected a field name, found %s", p.describe())
	}
	for isNameRune(p.peek()) {
		p.pos++
	}
	return p.in[start:p.pos], nil
}

func (p *parser) operator() (operator, error) {
	start := p.pos
	for isOperatorRune(p.peek()) {
		p.pos++
	}
	switch text := p.in[start:p.pos]; text {
	case "==":
		return opEqual, nil
	case "!=":
		return opNotEqual, nil
	case "~=":
		return opMatch, nil
	case "":
		return 0, p.errorf(start, `expected an operator ("==", "!=" or "~="), found %s`, p.describe())
	default:
		return 0, p.errorf(start, "unsupported operator %q", text)
	}
}

func (p *parser) value(op operator) (string, error) {
	start := p.pos
	switch r := p.peek(); {
	case r == '"':
		return p.quoted()
	case r == '/' || r == '|':
		if op != opMatch {
			return "", p.errorf(start, "only ~= values may be quoted with %q", r)
		}
		return p.quoted()
	case r < 0 || r == ',' || isOperatorRune(r) || unicode.IsSpace(r):
		return "", p.errorf(start, "expected a value, found %s", p.describe())
	}
	// Like containerd, take the first rune unchecked: "a==\x01" is valid.
	_, size := utf8.DecodeRuneInString(p.in[p.pos:])
	p.pos += size
	for !p.eof() {
		r, size := utf8.DecodeRuneInString(p.in[p.pos:])
		if !isValueRune(r) {
			break
		}
		p.pos += size
	}
	return p.in[start:p.pos], nil
}

// isNameRune reports whether r may appear in an unquoted field name.
func isNameRune(r rune) bool {
	return r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
}

func isOperatorRune(r rune) bool {
	return r == '=' || r == '!' || r == '~'
}

// isValueRune reports whether r may appear in a bare value.
func isValueRune(r rune) bool {
	return r != ',' && !unicode.IsSpace(r) && unicode.IsGraphic(r)
}
