package route

import (
	"strconv"
	"sync"
)

// Redis Cluster's key slots: CRC16 (XMODEM) of the key, or of its hash
// tag, modulo 16384.

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster
// hashes keys.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keySlot returns the cluster slot of a tag-free key (or of a hash tag).
func keySlot(s string) int { return int(crc16(s) & 16383) }

var slotTags struct {
	once sync.Once
	tags [16384]string
}

// slotTag returns a short string whose slot is slot: "{" + slotTag(n) +
// "}" is a key on slot n. The table is built once, on first use.
func slotTag(slot int) string {
	slotTags.once.Do(func() {
		left := 16384
		for i := 0; left > 0; i++ {
			t := strconv.Itoa(i)
			if n := keySlot(t); slotTags.tags[n] == "" {
				slotTags.tags[n] = t
				left--
			}
		}
	})
	return slotTags.tags[slot&16383]
}
