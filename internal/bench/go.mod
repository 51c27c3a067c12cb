module github.com/redispool/redispool/internal/bench

go 1.26.0

replace github.com/redispool/redispool => ../..

require (
	github.com/gomodule/redigo v1.9.3
	github.com/jackc/puddle/v2 v2.2.3
	github.com/redis/go-redis/v9 v9.23.0
	github.com/redis/rueidis v1.0.80
	github.com/redispool/redispool v0.0.0
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sync v0.1.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
