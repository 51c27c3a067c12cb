// Package main copies a Pool by value, which go vet must report: a copied
// Pool would share its connections' bookkeeping with the original.
package main

import "github.com/redispool/redispool"

func use(p redispool.Pool) { _ = p.Get() }

func main() {
	var p redispool.Pool
	use(p)
}
