package codec

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestDecodeHostileInput: inputs meant to crash or exhaust a JSON parser
// are answered with an error (or decoded), never a panic.
func TestDecodeHostileInput(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 10000) + `1` + strings.Repeat(`}`, 10000)
	deepArr := `{"cmd":"chat","recv":"b","content":"x","x":` + strings.Repeat(`[`, 100000) + strings.Repeat(`]`, 100000) + `}`
	want := map[string]error{
		"deep object": ErrInvalidJSON, "deep array field": ErrInvalidJSON, "unclosed deep": ErrInvalidJSON,
		"huge number": ErrBadID, "huge exponent": nil, "nul bytes": ErrInvalidJSON, "nul in string": ErrInvalidJSON,
		"invalid utf8": ErrInvalidUTF8, "bad escape": ErrInvalidJSON, "lone surrogate": nil, "binary": ErrInvalidUTF8,
		"duplicate keys": ErrMissingRecv, "number as cmd": ErrFieldType, "object as content": ErrFieldType,
	}
	cases := map[string]string{
		"deep object":       deep,
		"deep array field":  deepArr,
		"unclosed deep":     strings.Repeat(`[`, 200000),
		"huge number":       `{"cmd":"chat","recv":"b","content":"x","id":` + strings.Repeat("9", 5000) + `}`,
		"huge exponent":     `{"cmd":"ping","x":1e999999999}`,
		"nul bytes":         "{\"cmd\":\"ping\"\x00}",
		"nul in string":     "{\"cmd\":\"chat\",\"recv\":\"b\",\"content\":\"a\x00b\"}",
		"invalid utf8":      "{\"cmd\":\"chat\",\"recv\":\"b\",\"content\":\"\xff\xfe\"}",
		"bad escape":        `{"cmd":"chat","recv":"b","content":"\uZZZZ"}`,
		"lone surrogate":    `{"cmd":"chat","recv":"b","content":"\ud800"}`,
		"binary":            "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
		"duplicate keys":    `{"cmd":"ping","cmd":"chat"}`,
		"number as cmd":     `{"cmd":1}`,
		"object as content": `{"cmd":"chat","recv":"b","content":{"a":1}}`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			var r Request
			err := Decode([]byte(in), &r)
			if w := want[name]; w == nil && err != nil || w != nil && !errors.Is(err, w) {
				t.Fatalf("%s: Decode = %v, want %v", name, err, w)
			}
			if err == nil && r.Content != "" {
				// Whatever was accepted must encode to valid JSON.
				line := AppendDelivery(nil, "a", "b", r.Content, 1)
				if !json.Valid(line[:len(line)-1]) {
					t.Fatalf("%s: delivery is not valid JSON: %q", name, line)
				}
			}
		})
	}
}
