// Package toxiproxy runs redispool through network faults injected by an
// in-process Shopify/toxiproxy v2 proxy between the pool and a real
// redis-server: replies delayed beyond ReadTimeout, replies sliced across
// the read deadline, a black hole, connections reset, and connections cut
// in the middle of a reply.
//
// It is a nested module so that toxiproxy and its dependencies stay out of
// redispool's go.mod. It has only tests: run them with
//
//	cd internal/toxiproxy && go test -race -count=1 ./...
package toxiproxy
