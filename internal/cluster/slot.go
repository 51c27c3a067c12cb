// Package cluster knows where Redis Cluster wants a command: the hash slot
// of a key ([Slot]) and, for every command of Redis 7, where its keys are
// and whether a replica may serve it ([RouteOf]).
//
// The command table is generated from the COMMAND reply of a real
// redis-server (see ./gen) and checked against it by the tests, as are
// the slots (CLUSTER KEYSLOT) and the keys (COMMAND GETKEYS).
package cluster

//go:generate go run ./gen/cmd/gentable -o table.go

// SlotCount is the number of hash slots of a Redis Cluster.
const SlotCount = 16384

// Slot is the hash slot of key: CRC16 (XMODEM) of the key, or of its
// {hash tag} when the key has a non-empty one, mod 16384, as Redis Cluster
// computes it. The hash tag is the text between the first '{' and the
// first '}' after it.
func Slot(key string) int { return slot(key) }

// slot is Slot for a key held as a string or as bytes.
func slot[K string | []byte](key K) int {
	for i := 0; i < len(key); i++ {
		if key[i] != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j > i+1 {
					key = key[i+1 : j]
				}
				break
			}
		}
		break
	}
	return int(crc16(key) & (SlotCount - 1))
}

// crc16 is CRC-16/XMODEM: polynomial 0x1021, initial value 0, no
// reflection, as in Redis's crc16.c.
func crc16[K string | []byte](key K) uint16 {
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[i]]
	}
	return crc
}

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()
