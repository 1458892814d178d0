package route

import "testing"

func TestKeySlot(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for k, want := range map[string]int{"123456789": 0x31C3 & 16383, "foo": 12182, "bar": 5061, "": 0} {
		if got := keySlot(k); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", k, got, want)
		}
	}
	for _, n := range []int{0, 1, 5460, 5461, 16383} {
		if got := keySlot(slotTag(n)); got != n {
			t.Errorf("slotTag(%d) = %q on slot %d", n, slotTag(n), got)
		}
	}
}
