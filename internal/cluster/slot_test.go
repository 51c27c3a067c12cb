package cluster_test

import (
	"math/rand/v2"
	"testing"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/cluster"
)

// hashTagKeys are the edge cases of the hash tag rule: the tag is what lies
// between the first '{' and the first '}' after it, when that is not empty.
var hashTagKeys = []string{
	"", "{", "}", "{}", "}{", "{{}}", "{{a}}", "{a}}", "a{b}c{d}", "a{}b{c}", "{}{a}", "{a", "a}", "}{a}",
	"{user1000}.following", "{user1000}.followers", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}",
	"{\x00}", "\xff{\xfe}", "123456789", "{123456789}",
}

// Slot is CLUSTER KEYSLOT: CRC16/XMODEM of the key or its hash tag, mod 16384.
func TestSlotIsClusterKeyslot(t *testing.T) {
	c := startServer(t)
	keys := append(append([]string{}, hashTagKeys...), randomKeys(3000)...)
	want := keyslots(t, c, keys)
	for i, k := range keys {
		if got := cluster.Slot(k); got != want[i] {
			t.Errorf("Slot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want[i])
		}
		if got := cluster.RouteOf("GET", []interface{}{[]byte(k)}).Slot; got != want[i] {
			t.Errorf("RouteOf(GET []byte(%q)).Slot = %d, CLUSTER KEYSLOT says %d", k, got, want[i])
		}
	}
}

// randomKeys returns n keys of up to 23 random bytes, a third of them
// braces, a, b, 0 or 0xff.
func randomKeys(n int) []string {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab{}\x00\xff")
	keys := make([]string, n)
	for k := range keys {
		b := make([]byte, rng.IntN(24))
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(3) == 0 {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
		}
		keys[k] = string(b)
	}
	return keys
}

// keyslots asks CLUSTER KEYSLOT for the slot of each key, pipelined.
func keyslots(t *testing.T, c redis.Conn, keys []string) []int {
	t.Helper()
	for _, k := range keys {
		if err := c.Send("CLUSTER", "KEYSLOT", k); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	slots := make([]int, len(keys))
	for i, k := range keys {
		n, err := redis.Int(c.Receive())
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %q: %v", k, err)
		}
		slots[i] = n
	}
	return slots
}

// Slot needs no server for the check value of CRC-16/XMODEM, 0x31C3.
func TestSlotOfTheCRC16CheckString(t *testing.T) {
	if got := cluster.Slot("123456789"); got != 0x31C3 {
		t.Errorf("Slot(123456789) = %#x, want 0x31c3", got)
	}
	if a, b := cluster.Slot("{user1000}.following"), cluster.Slot("{user1000}.followers"); a != b {
		t.Errorf("keys with the hash tag {user1000} have slots %d and %d", a, b)
	}
}
