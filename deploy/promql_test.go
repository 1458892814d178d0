package deploy

import (
	"fmt"
	"regexp"
	"strings"
)

// grafanaVars replaces Grafana's built-in interval variables with a
// duration, and any other $var or ${var} (they only appear inside label
// matchers) with ".*", so the expression is plain PromQL.
func grafanaVars(expr string) string {
	r := strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m",
		"$__interval", "1m", "${__interval}", "1m", "$__range", "1h", "${__range}", "1h")
	return userVar.ReplaceAllString(r.Replace(expr), ".*")
}

var userVar = regexp.MustCompile(`\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?`)

// promqlWords are the identifiers in a PromQL expression that are not
// metric names: aggregation operators (which may be followed by by/without
// before their parenthesis), binary operators, modifiers and constants.
var promqlWords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true,
	"stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true,
	"quantile": true, "limitk": true, "limit_ratio": true,
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true,
	"offset": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true,
}

// labelListWords are followed by a parenthesised list of label names.
var labelListWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names an expression selects: identifiers
// outside strings, label matchers ({...}) and ranges ([...]) that are not
// functions (followed by "("), operators or label lists. It is a lexer, not
// a parser; promtool (when installed) checks the syntax itself.
func metricNames(expr string) ([]string, error) {
	s := grafanaVars(expr)
	var names []string
	i := 0
	skipTo := func(close byte) error {
		for i < len(s) && s[i] != close {
			if s[i] == '"' || s[i] == '\'' || s[i] == '`' {
				if err := skipString(s, &i); err != nil {
					return err
				}
				continue
			}
			i++
		}
		if i == len(s) {
			return fmt.Errorf("unclosed %q in %q", close, expr)
		}
		i++
		return nil
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(s, &i); err != nil {
				return nil, err
			}
		case c == '{':
			if err := skipTo('}'); err != nil {
				return nil, err
			}
		case c == '[':
			if err := skipTo(']'); err != nil {
				return nil, err
			}
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			// A number or a duration (5m, 1e3, 0x1f, 1h30m).
			for i < len(s) && (isWordByte(s[i]) || s[i] == '.') {
				i++
			}
		case isWordStart(c):
			j := i
			for i < len(s) && (isWordByte(s[i]) || s[i] == ':') {
				i++
			}
			word := s[j:i]
			k := i
			for k < len(s) && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r') {
				k++
			}
			lower := strings.ToLower(word)
			switch {
			case labelListWords[lower]:
				if k < len(s) && s[k] == '(' {
					i = k + 1
					if err := skipTo(')'); err != nil {
						return nil, err
					}
				}
			case promqlWords[lower]:
			case k < len(s) && s[k] == '(':
				// A function call.
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names, nil
}

func skipString(s string, i *int) error {
	q := s[*i]
	j := *i + 1
	for j < len(s) && s[j] != q {
		if s[j] == '\\' && q != '`' {
			j++
		}
		j++
	}
	if j >= len(s) {
		return fmt.Errorf("unclosed string in %q", s)
	}
	*i = j + 1
	return nil
}

func isWordStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isWordByte(c byte) bool { return isWordStart(c) || c >= '0' && c <= '9' }

// labelValuesMetric returns the metric of a Grafana label_values(metric{...},
// label) variable query, or "" for label_values(label) and other queries.
func labelValuesMetric(q string) string {
	m := labelValuesRE.FindStringSubmatch(q)
	if m == nil {
		return ""
	}
	return m[1]
}

var labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{,]`)
