package route

import (
	"strings"
	"testing"
	"unsafe"
)

// TestKnownPutCopiesName: a name stored in the table must not share the
// memory of the string it came from (a decoded request line), or every
// entry keeps a whole line alive.
func TestKnownPutCopiesName(t *testing.T) {
	k := newKnown(64)
	line := `{"cmd":"chat","recv":"bob","content":"` + strings.Repeat("x", 512) + `"}`
	at := strings.Index(line, "bob")
	name := line[at : at+3]
	k.put(name, Route{Server: "s1", Token: "t"}, k.begin(name))
	if r, ok := k.get("bob"); !ok || r.Server != "s1" {
		t.Fatalf("get(bob) = %+v, %v; want s1, true", r, ok)
	}
	sh := k.shard(name)
	for key := range sh.m {
		if unsafe.StringData(key) == unsafe.StringData(name) {
			t.Fatalf("the table's key %q shares the request line's memory", key)
		}
	}
}
