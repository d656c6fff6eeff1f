package filters

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// quoted consumes the string whose opening delimiter is at p.pos and
// returns its decoded content. The closing delimiter is the same byte.
func (p *parser) quoted() (string, error) {
	start := p.pos
	delim := p.in[start]
	p.pos++

	var b []byte
	for !p.eof() {
		switch c := p.in[p.pos]; c {
		case delim:
			p.pos++
			return string(b), nil
		case '\n':
			return "", p.errorf(start, "unterminated quoted string")
		case '\\':
			var err error
			if b, err = p.escape(b, delim); err != nil {
				return "", err
			}
		default:
			b = append(b, c)
			p.pos++
		}
	}
	return "", p.errorf(start, "unterminated quoted string")
}

// escape decodes the escape sequence at p.pos, appends the result to b and
// moves past it. Byte escapes (\ooo, \xhh) may produce invalid UTF-8.
func (p *parser) escape(b []byte, delim byte) ([]byte, error) {
	start := p.pos
	if start+1 >= len(p.in) {
		return nil, p.errorf(start, "unterminated quoted string")
	}
	c := p.in[start+1]
	p.pos += 2

	switch c {
	case 'a':
		return append(b, '\a'), nil
	case 'b':
		return append(b, '\b'), nil
	case 'f':
		return append(b, '\f'), nil
	case 'n':
		return append(b, '\n'), nil
	case 'r':
		return append(b, '\r'), nil
	case 't':
		return append(b, '\t'), nil
	case 'v':
		return append(b, '\v'), nil
	case '\\', delim:
		return append(b, c), nil
	case '0', '1', '2', '3', '4', '5', '6', '7':
		p.pos-- // the first digit is part of the number
		v, ok := p.digits(8, 3)
		if !ok || v > 0xff {
			break
		}
		return append(b, byte(v)), nil
	case 'x':
		if v, ok := p.digits(16, 2); ok {
			return append(b, byte(v)), nil
		}
	case 'u', 'U':
		n := 4
		if c == 'U' {
			n = 8
		}
		// Surrogate halves are not rejected; like containerd, they
		// decode to U+FFFD.
		if v, ok := p.digits(16, n); ok && v <= utf8.MaxRune {
			return utf8.AppendRune(b, rune(v)), nil
		}
	}
	return nil, p.errorf(start, "invalid escape sequence")
}

// digits consumes exactly n digits in base and returns their value.
func (p *parser) digits(base, n int) (uint64, bool) {
	if p.pos+n > len(p.in) {
		return 0, false
	}
	// With an explicit base, ParseUint takes no sign, prefix or "_".
	v, err := strconv.ParseUint(p.in[p.pos:p.pos+n], base, 32)
	if err != nil {
		return 0, false
	}
	p.pos += n
	return v, true
}

// quoteField writes a field path component so that Parse reads it back.
func quoteField(field string) string {
	if field == "" || strings.IndexFunc(field, func(r rune) bool { return !isNameRune(r) }) >= 0 {
		return strconv.Quote(field)
	}
	return field
}

// quoteValue writes a value so that Parse reads it back, leaving it bare
// when the grammar allows.
func quoteValue(value string) string {
	first, _ := utf8.DecodeRuneInString(value)
	if value == "" || !utf8.ValidString(value) ||
		strings.ContainsRune(`"/|=!~`, first) ||
		strings.IndexFunc(value, func(r rune) bool { return !isValueRune(r) }) >= 0 {
		return strconv.Quote(value)
	}
	return value
}
